"""Command line: `wsseg train`, `wsseg eval`, `wsseg synth` (`run_training.py` is `wsseg train`)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from wsseg.core.checkpoint import CheckpointError
from wsseg.core.config import ConfigError, load_config

log = logging.getLogger(__name__)


def _setup_logging(run_dir: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "log.txt"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=handlers, force=True)


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=["i", "ii", "all"], default="i",
                        help="i: pixel labels only; ii: pixel labels + crop tags; all: both, compared")
    parser.add_argument("--config", required=True, help="YAML file in configs/")
    parser.add_argument("--out", help="run folder (default: <out_root>/<config name>-<time>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out: finished stages are kept, others resume from last.pt")
    parser.add_argument("--split-seeds", help="comma-separated split seeds: repeat --task all and report mean ± std")
    parser.add_argument("--oracle", action="store_true",
                        help="with --task all: also train on N1 + N2 with N2's true pixel labels (experiments "
                             "only) and report the gap task ii closes")


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_training.py", description=__doc__)
    add_train_args(parser)
    return _train(parser.parse_args(argv))


def _train(args) -> int:
    from wsseg.core.distributed import init_distributed
    from wsseg.pipeline.chain import run_task
    from wsseg.pipeline.seeds import run_split_seeds

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.oracle and args.task != "all":
        print("error: --oracle is a third arm of the comparison: use it with --task all", file=sys.stderr)
        return 2
    if args.resume and not args.out:
        print("error: --resume needs --out naming the run folder to continue", file=sys.stderr)
        return 2
    run_dir = Path(args.out) if args.out else Path(cfg.out_root) / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    dist_info = init_distributed()
    _setup_logging(run_dir if dist_info.is_main else None)
    log.info(f"run folder: {run_dir}")
    if args.split_seeds:
        if args.task != "all":
            print("error: --split-seeds repeats the comparison: use it with --task all", file=sys.stderr)
            return 2
        seeds = [int(s) for s in args.split_seeds.split(",") if s.strip()]
        run_split_seeds(cfg, seeds, run_dir, args.resume, dist_info, oracle=args.oracle)
    else:
        run_task(cfg, args.task, run_dir, args.resume, dist_info, oracle=args.oracle)
    log.info(f"done: reports in {run_dir}")
    return 0


def _eval(args) -> int:
    from wsseg.core.checkpoint import load_checkpoint
    from wsseg.core.config import apply_overrides, config_from_dict
    from wsseg.datasets.splits import load_split
    from wsseg.pipeline.data import Run, load_source
    from wsseg.pipeline.segmenter import evaluate_checkpoint

    checkpoint = Path(args.checkpoint)
    state = load_checkpoint(checkpoint)
    cfg = config_from_dict(apply_overrides(state["config"], args.overrides))
    split_path = Path(args.split) if args.split else checkpoint.parent.parent / "split.json"
    if not split_path.exists():
        print(f"error: no split file {split_path}; pass --split", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else checkpoint.parent / f"eval-{checkpoint.stem}"
    _setup_logging(out)
    run = Run(cfg, load_source(cfg), load_split(split_path), run_dir=split_path.parent)
    metrics = evaluate_checkpoint(run, out, checkpoint, title=f"Evaluation of {checkpoint}")
    print(f"mIoU {metrics['miou']:.4f}  mean F1 {metrics['mean_f1']:.4f}  OA {metrics['overall_accuracy']:.4f}  → {out}")
    return 0


def _synth(args) -> int:
    from wsseg.datasets.synthetic_aerial import generate_synthetic_vaihingen

    generate_synthetic_vaihingen(Path(args.out), num_tiles=args.tiles, tile_px=tuple(args.size), seed=args.seed)
    print(f"wrote {args.tiles} synthetic tiles of {args.size[0]}×{args.size[1]} px in the Vaihingen layout to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wsseg", description="weakly semi-supervised semantic segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_args(sub.add_parser("train", help="train and evaluate task i, ii or both"))
    ev = sub.add_parser("eval", help="re-evaluate a saved checkpoint on the test tiles of its run")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--split", help="split.json (default: the one in the checkpoint's run folder)")
    ev.add_argument("--out", help="report folder (default: beside the checkpoint)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override the checkpoint's config, e.g. --set data.root=/data/vaihingen")
    sy = sub.add_parser("synth", help="write the synthetic aerial dataset in the Vaihingen layout")
    sy.add_argument("out", help="output root (gets top/, gts_for_participants/, gts_eroded_for_participants/)")
    sy.add_argument("--tiles", type=int, default=33, help="number of tiles (default 33, the real area numbers)")
    sy.add_argument("--size", type=int, nargs=2, default=[384, 384], metavar=("H", "W"), help="tile size in px")
    sy.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    handler = {"train": _train, "eval": _eval, "synth": _synth}[args.command]
    try:
        return handler(args)
    except (ValueError, FileNotFoundError, ImportError, CheckpointError) as err:
        # Bad input gets one clear line, not a traceback; the message names the file or key.
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
