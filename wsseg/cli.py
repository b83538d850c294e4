"""Command line: `wsseg train | study | sweep | eval | check-data | publish | predict | export | weights | synth |
zoomout`
(`run_training.py` is `wsseg train`).

Exit codes: 0 done; 1 `wsseg check-data` found problems in the data; 2 bad input (a config, a file,
an option, a checkpoint), reported as one `error: ...` line naming it, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from wsseg.core.checkpoint import CheckpointError
from wsseg.core.config import load_config
from wsseg.core.run_lock import RunFolderInUse
from wsseg.datasets.base import DataProblemsError, printable

log = logging.getLogger(__name__)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is when a line is logged, not to the stream it was when the
    handler was made: a caller that swaps stdout and closes its own (pytest's capture, a notebook)
    must not leave the log writing into a closed file."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _):
        pass


def _setup_logging(run_dir: Path | None = None, quiet: bool = False) -> None:
    """Log to stdout, and to `run_dir/log.txt` when given; `quiet`: warnings and errors only
    (the processes other than rank 0 under torchrun, which would repeat its every line)."""
    handlers: list[logging.Handler] = [_StdoutHandler()]
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "log.txt"))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", handlers=handlers, force=True)


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=["i", "semi", "ii", "all"], default="i",
                        help="i: pixel labels only; semi: pixel labels + the tagged images without their tags; "
                             "ii: pixel labels + tags; all: the three, compared")
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
    parser.add_argument("--init-from", metavar="MODEL",
                        help="start the segmenters from a trained model: a checkpoint .pt, a stage or `wsseg "
                             "publish` folder, the URL of its model.zip or a registry name (model.init_from)")
    parser.add_argument("--reset-head", action="store_true",
                        help="with --init-from: take every weight but the classifier's, for other classes "
                             "(model.reset_head)")


# Bad input, whichever subcommand meets it: ConfigError, DatasetError (DataProblemsError),
# PredictError and RasterError are ValueErrors, DownloadError a CheckpointError; OSError covers
# files that cannot be read or written; RunFolderInUse a second run in a folder in use, and a
# FloatingPointError (NonFiniteLoss) a loss that went NaN. Anything else is a bug and keeps its traceback.
KNOWN_ERRORS = (ValueError, OSError, ImportError, CheckpointError, RunFolderInUse, FloatingPointError)


def report_error(err: BaseException) -> int:
    """One `error: ...` line on stderr (several problems of the data each on a line of their own
    above it), ending with its fix where the error knows one (`DatasetError.fix`), and exit code 2."""
    if isinstance(err, DataProblemsError) and len(err.problems) > 1:
        for problem in err.problems:
            print(f"  {problem.line()}", file=sys.stderr)
        hint = f"; {err.hint}" if err.hint else ""
        print(f"error: {len(err.problems)} problems in the data, listed above{hint}", file=sys.stderr)
    else:
        fix = getattr(err, "fix", "")
        print(f"error: {printable(err)}{f'; fix: {fix}' if fix else ''}", file=sys.stderr)
    return 2


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_training.py", description=__doc__)
    add_train_args(parser)
    try:
        return _train(parser.parse_args(argv))
    except KNOWN_ERRORS as err:
        return report_error(err)


def _train(args) -> int:
    from wsseg.core.distributed import init_distributed
    from wsseg.pipeline.tasks import run_task
    from wsseg.pipeline.seeds import run_split_seeds

    cfg = load_config(args.config, args.overrides)
    # The flags override the config, and so land in the run folder's config.yaml.
    if args.init_from:
        cfg.model.init_from = args.init_from
    if args.reset_head:
        cfg.model.reset_head = True
    if cfg.model.reset_head and not cfg.model.init_from:
        print("error: --reset-head (model.reset_head) needs --init-from (model.init_from)", file=sys.stderr)
        return 2
    if args.oracle and args.task != "all":
        print("error: --oracle is a third arm of the comparison: use it with --task all", file=sys.stderr)
        return 2
    if args.resume and not args.out:
        print("error: --resume needs --out naming the run folder to continue", file=sys.stderr)
        return 2
    run_dir = Path(args.out) if args.out else Path(cfg.out_root) / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    dist_info = init_distributed(cfg.device)
    # Rank 0 alone writes log.txt: the others' warnings and errors go to their stdout.
    _setup_logging(run_dir if dist_info.is_main else None, quiet=not dist_info.is_main)
    log.info(f"run folder: {run_dir}")
    if args.split_seeds and args.task != "all":
        print("error: --split-seeds repeats the comparison: use it with --task all", file=sys.stderr)
        return 2

    def train():
        if args.split_seeds:
            seeds = [int(s) for s in args.split_seeds.split(",") if s.strip()]
            run_split_seeds(cfg, seeds, run_dir, args.resume, dist_info, oracle=args.oracle)
        else:
            run_task(cfg, args.task, run_dir, args.resume, dist_info, oracle=args.oracle)

    code = _until_interrupted(train, resume_command(args, run_dir))
    if code == 0:
        log.info(f"done: reports in {run_dir}")
    return code


def _until_interrupted(work, continue_command: str) -> int:
    """Run `work()`; Ctrl-C or SIGTERM end it with the command that continues it and the exit code
    of that signal (128 + its number) instead of a traceback."""
    from wsseg.core.train import TrainingInterrupted

    previous_sigterm = _sigterm_as_interrupt()
    try:
        work()
    except TrainingInterrupted as stop:
        print(f"interrupted by {stop}. To continue where it stopped:\n  {continue_command}", file=sys.stderr)
        signum = getattr(signal.Signals, stop.signal_name, None) if stop.signal_name.startswith("SIG") else None
        return 128 + int(signum) if signum is not None else 1
    except KeyboardInterrupt as stop:
        # Outside the training steps (evaluation, pseudo masks): the stage in progress starts over.
        name = "SIGTERM" if isinstance(stop, _Terminated) else "Ctrl-C"
        print(f"interrupted by {name} between training steps; finished stages and the last checkpoint are kept. "
              f"To continue:\n  {continue_command}", file=sys.stderr)
        return 128 + int(signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT)
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


class _Terminated(KeyboardInterrupt):
    pass


def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's preemption) handled as Ctrl-C is, so that it ends with the resume
    command rather than silently; the training loop catches both at its step boundaries."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        raise _Terminated()

    return signal.signal(signal.SIGTERM, terminate)


def resume_command(args, run_dir: Path) -> str:
    """The command line that continues the run `args` started in `run_dir`."""
    launcher = "python run_training.py" if Path(sys.argv[0]).name == "run_training.py" else "wsseg train"
    words = [*launcher.split(), "--task", args.task, "--config", args.config, "--out", str(run_dir), "--resume"]
    for override in args.overrides:
        words += ["--set", override]
    if args.split_seeds:
        words += ["--split-seeds", args.split_seeds]
    if args.oracle:
        words.append("--oracle")
    if args.init_from:
        words += ["--init-from", args.init_from]
    if args.reset_head:
        words.append("--reset-head")
    return shlex.join(words)


def parse_split_seeds(text: str, option: str = "--split-seeds") -> list[int]:
    """'0,1,2' → [0, 1, 2]; a value that is not an integer, or one given twice, is a ValueError naming it."""
    seeds = []
    for item in (i.strip() for i in text.split(",")):
        try:
            seed = int(item)
        except ValueError:
            raise ValueError(f"{option}: {item!r} is not an integer split seed") from None
        if seed in seeds:
            raise ValueError(f"{option}: split seed {seed} is given twice")
        seeds.append(seed)
    return seeds


def _study(args) -> int:
    """`wsseg study`: the arms asked over the split seeds, then study.json/.md in --out."""
    from wsseg.core.distributed import init_distributed
    from wsseg.pipeline.chain import check_arms
    from wsseg.pipeline.study import check_precision, run_study

    try:
        arms = check_arms(a.strip() for a in args.arms.split(","))
    except ValueError as err:
        raise ValueError(f"--arms: {err}") from None
    seeds = parse_split_seeds(args.split_seeds)
    results = Path(args.results) if args.results else None
    if results is not None and not (results.name.startswith("study_") and results.suffix == ".json"):
        raise ValueError(f"--results {args.results}: name it study_<name>.json, the files benchmarks/study_table.py "
                         "tabulates")
    cfg = load_config(args.config, args.overrides)
    # Before the log and the first run folder: a refused study leaves nothing behind.
    check_precision(cfg, arms, args.allow_auto_precision)
    out = Path(args.out)
    dist_info = init_distributed(cfg.device)
    _setup_logging(out if dist_info.is_main else None, quiet=not dist_info.is_main)
    words = ["wsseg", "study", "--config", args.config, "--arms", ",".join(arms), "--split-seeds",
             ",".join(str(s) for s in seeds), "--out", args.out, "--resume"]
    words += [w for o in args.overrides for w in ("--set", o)]
    if args.allow_auto_precision:
        words.append("--allow-auto-precision")
    if args.results:
        words += ["--results", args.results]
    code = _until_interrupted(lambda: run_study(cfg, arms, seeds, out, args.resume, dist_info,
                                                config_name=Path(args.config).name, overrides=args.overrides,
                                                allow_auto_precision=args.allow_auto_precision, results_file=results),
                              shlex.join(words))
    if code == 0 and dist_info.is_main:
        print(f"study done: {out / 'study.md'}" + (f", results copied to {results}" if results else ""))
    return code


def _zoomout(args) -> int:
    """One step of the zoom-out model (`pipeline.tasks.run_zoomout_step`) in the run folder --out."""
    from wsseg.core.distributed import init_distributed
    from wsseg.pipeline.tasks import run_zoomout_step

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.out)
    dist_info = init_distributed(cfg.device)
    _setup_logging(run_dir if dist_info.is_main else None, quiet=not dist_info.is_main)
    words = ["wsseg", "zoomout", args.step, "--config", args.config, "--out", str(run_dir), "--resume"]
    results = []
    code = _until_interrupted(lambda: results.append(run_zoomout_step(cfg, args.step, run_dir, args.resume, dist_info)),
                              shlex.join(words + [w for o in args.overrides for w in ("--set", o)]))
    if code != 0:
        return code
    (result,) = results
    if args.step == "sample":
        print(f"sampled {result['samples']} hypercolumns of {result['channels']} channels from {result['tiles']} "
              f"N1 tiles → {run_dir / 'zoomout' / 'samples'}")
    elif args.step == "fit":
        print(f"FC classifier: loss {result['train_loss']:.4f}, accuracy on the samples "
              f"{result['train_accuracy']:.4f} → {run_dir / 'zoomout' / 'classifier'}")
    else:
        _print_scores(result, run_dir / "task_i")
    return 0


def _sweep(args) -> int:
    """`wsseg sweep`: every combination planned and validated first, then run one after the other."""
    from wsseg.core.distributed import init_distributed
    from wsseg.pipeline.sweep import run_sweep
    from wsseg.pipeline.sweep_plan import parse_grid, plan_sweep

    out = Path(args.out)
    # Every combination's config and data are checked before the first trains, and before any log is written.
    sweep = plan_sweep(args.config, parse_grid(args.grid), out, args.overrides, args.task)
    dist_info = init_distributed(sweep.runs[0].cfg.device)
    _setup_logging(out if dist_info.is_main else None, quiet=not dist_info.is_main)
    words = ["wsseg", "sweep", "--config", args.config, "--task", args.task, "--out", args.out]
    for item in args.grid:
        words += ["--grid", item]
    for item in args.overrides:
        words += ["--set", item]
    code = _until_interrupted(lambda: run_sweep(sweep, dist_info), shlex.join(words))
    if code == 0 and dist_info.is_main:
        print(f"sweep done: {out / 'sweep.md'}")
    return code


def _eval(args) -> int:
    from wsseg.pipeline.release import locate_model

    location = locate_model(args.checkpoint)
    if location.kind == "checkpoint":
        return _eval_checkpoint(args, location.path)
    return _eval_release(args, location)


def _eval_checkpoint(args, checkpoint: Path) -> int:
    """A run checkpoint, on the test tiles of its run (or of --split)."""
    from wsseg.core.checkpoint import load_checkpoint
    from wsseg.core.config import apply_overrides, config_from_dict, config_to_dict, saved_config_from_dict
    from wsseg.datasets.splits import load_split
    from wsseg.pipeline.data import Run, load_source
    from wsseg.pipeline.evaluation import evaluate_checkpoint

    state = load_checkpoint(checkpoint)
    saved = config_to_dict(saved_config_from_dict(state["config"]))
    cfg = config_from_dict(apply_overrides(saved, args.overrides))
    split_path = Path(args.split) if args.split else checkpoint.parent.parent / "split.json"
    if not split_path.exists():
        print(f"error: no split file {split_path}; pass --split", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else checkpoint.parent / f"eval-{checkpoint.stem}"
    _setup_logging(out)
    run = Run(cfg, load_source(cfg), load_split(split_path), run_dir=split_path.parent)
    metrics = evaluate_checkpoint(run, out, checkpoint, title=f"Evaluation of {checkpoint}")
    return _print_scores(metrics, out)


def _eval_release(args, location) -> int:
    """A published model, on the test tiles of the split it records (or of --split), in its
    training config's dataset (`--set data.root=...` where the data lives here)."""
    from wsseg.core.config import apply_overrides, config_from_dict, config_to_dict, saved_config_from_dict
    from wsseg.core.io import atomic_write_json
    from wsseg.datasets.splits import load_split
    from wsseg.pipeline.data import Run, load_source
    from wsseg.pipeline.release import load_release, read_release_meta
    from wsseg.pipeline.evaluation import check_classes, evaluate_model

    meta = read_release_meta(location.path)
    trained = load_release(location.path, source=location.source)
    saved = config_to_dict(saved_config_from_dict(trained.config))
    cfg = config_from_dict(apply_overrides(saved, args.overrides))
    out = Path(args.out) if args.out else Path(f"eval-{meta.get('name') or location.path.name}")
    _setup_logging(out)
    if args.split:
        split = load_split(args.split)
    elif meta.get("split"):
        # The split it was tested on, recorded beside the report (and checked as any split file).
        split = load_split(atomic_write_json(out / "split.json", meta["split"]))
    else:
        print(f"error: {location.source} records no split; pass --split", file=sys.stderr)
        return 2
    source = load_source(cfg)
    check_classes(trained.class_names, source.classes.names, location.source)
    run = Run(cfg, source, split, run_dir=out)
    metrics = evaluate_model(run, out, trained.model, {"path": location.source},
                             title=f"Evaluation of {location.source}")
    return _print_scores(metrics, out)


def _print_scores(metrics: dict, out: Path) -> int:
    print(f"mIoU {metrics['miou']:.4f}  mean F1 {metrics['mean_f1']:.4f}  OA {metrics['overall_accuracy']:.4f}"
          f"  → {out}")
    return 0


def _publish(args) -> int:
    from wsseg.pipeline.publish import publish

    published = publish(args.checkpoint, args.out, name=args.name, force=args.force)
    print(f"wrote the release {published.name!r} to {published.folder}")
    for file_name, digest in published.sha256.items():
        print(f"sha256 {digest}  {file_name}")
    print("to share it: upload model.zip, then add this line to wsseg/checkpoints.yaml (or $WSSEG_REGISTRY)"
          + ("" if args.url else ", with its URL") + ":")
    print(f"  {published.registry_line(args.url)}")
    return 0


def _check_data(args) -> int:
    """Every problem of the configured dataset, one line each (warnings marked), then a summary;
    exit code 1 if any problem (not counting warnings)."""
    from wsseg.pipeline.data_check import check_data

    result = check_data(load_config(args.config, args.overrides), split_path=args.split, tags_path=args.tags,
                        progress=sys.stderr.isatty())
    for problem in result.problems:
        print(f"{'' if problem.blocking else 'warning: '}{problem.line()}")
    print(result.summary())
    return 1 if result.blocking else 0


def _synth(args) -> int:
    from wsseg.datasets.synthetic_aerial import generate_synthetic_vaihingen

    generate_synthetic_vaihingen(Path(args.out), num_tiles=args.tiles, tile_px=tuple(args.size), seed=args.seed)
    print(f"wrote {args.tiles} synthetic tiles of {args.size[0]}×{args.size[1]} px in the Vaihingen layout to {args.out}")
    return 0


def _predict(args) -> int:
    from wsseg.core.distributed import choose_device
    from wsseg.pipeline.predict import predict_paths
    from wsseg.pipeline.predict_plan import PredictOptions, parse_bands, parse_tta, parse_value_range
    from wsseg.pipeline.release import resolve_checkpoint

    _setup_logging()  # the precision chosen, GeoTIFF warnings
    bands, tta, value_range = parse_bands(args.bands), parse_tta(args.tta), parse_value_range(args.value_range)
    try:
        device = choose_device(args.device)
    except RuntimeError as err:  # cuda asked for, none there
        raise ValueError(f"--device: {err}") from None
    trained = resolve_checkpoint(args.checkpoint, device)
    eval_cfg = trained.config.get("eval", {})

    def given_or_eval(value, key, default):
        return value if value is not None else eval_cfg.get(key, default)

    opts = PredictOptions(window_px=given_or_eval(args.window, "window_px", 512),
                          stride_px=given_or_eval(args.stride, "stride_px", 384),
                          batch_size=given_or_eval(args.batch_size, "batch_size", 4), block_px=args.block,
                          bands=bands, value_range=value_range, tta=tta, crf=args.crf,
                          probabilities=args.probabilities, force=args.force, precision=args.precision)
    plan = predict_paths(trained, args.inputs, args.out, opts, pattern=args.glob)
    print(f"predicted {len(plan)} image(s) with {args.checkpoint} → {args.out}")
    return 0


def _export(args) -> int:
    from wsseg.pipeline.export import export_model
    from wsseg.pipeline.release import resolve_checkpoint

    out = export_model(resolve_checkpoint(args.checkpoint, "cpu"), args.format, args.out, force=args.force)
    print(f"exported {args.checkpoint} as {args.format} → {out}")
    return 0


def _weights(args) -> int:
    from wsseg.pipeline.weights import WEIGHTS, fetch_weights, weights_url

    if args.action == "list":
        for name, spec in WEIGHTS.items():
            print(f"{name:<9} {spec.file:<40} {spec.used_by}; from {weights_url(name)}")
        print("timm:<a timm model name>  a timm encoder's ImageNet weights, through timm's own download")
        return 0
    path, downloaded = fetch_weights(args.name)
    print(f"{args.name}: {'downloaded to' if downloaded else 'already there:'} {path}")
    return 0


def _add_predict_args(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("--checkpoint", required=True, help="a run checkpoint, e.g. RUN/task_i/best.pt")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (PNG, JPEG, TIFF), folders, GeoTIFFs")
    pr.add_argument("--out", required=True, help="output folder (folder inputs keep their sub-folders)")
    pr.add_argument("--glob", help="file pattern in folders, searched recursively (default: every image suffix)")
    pr.add_argument("--bands", help="three 1-based band indices the model takes, e.g. 1,2,3 or 4,1,2 for NIR-R-G "
                                    "(default 1,2,3; one band as grey)")
    pr.add_argument("--value-range", default="auto", help="LOW,HIGH input values mapped to 0..1 (default auto: "
                                                         "÷255 for 8-bit, a 2–98%% percentile stretch otherwise)")
    pr.add_argument("--tta", help="test-time augmentation, e.g. flip or flip,vflip,scales=0.75,1,1.25")
    pr.add_argument("--crf", action="store_true", help="dense CRF on the probabilities (ordinary images only)")
    pr.add_argument("--probabilities", action="store_true",
                    help="also write the per-class probabilities (.npy; float32 GeoTIFF for GeoTIFFs)")
    pr.add_argument("--window", type=int, help="window px (default: the checkpoint's eval.window_px)")
    pr.add_argument("--stride", type=int, help="stride px (default: the checkpoint's eval.stride_px)")
    pr.add_argument("--batch-size", type=int, help="windows per forward pass (default: eval.batch_size)")
    pr.add_argument("--block", type=int, default=2048, help="GeoTIFF block px read and written at a time")
    pr.add_argument("--device", default="auto", help="auto, cpu or cuda")
    pr.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="auto (default): the faster of fp32 and 16-bit autocast on this device, timed when "
                         "prediction starts; fp16 on CUDA only")
    pr.add_argument("--force", action="store_true", help="overwrite existing outputs")


def _add_export_args(ex: argparse.ArgumentParser) -> None:
    ex.add_argument("--checkpoint", required=True, help="a run checkpoint, e.g. RUN/task_i/best.pt")
    ex.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"])
    ex.add_argument("--out", required=True, help="output file")
    ex.add_argument("--force", action="store_true", help="overwrite an existing file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wsseg", description="weakly semi-supervised semantic segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_args(sub.add_parser("train", help="train and evaluate task i, ii or both"))
    st = sub.add_parser("study", help="the arms of the comparison asked (i, semi, ii, oracle) over split seeds, "
                                      "stages they share run once, at one precision: study.json/.md")
    st.add_argument("--config", required=True, help="YAML file in configs/")
    st.add_argument("--arms", default="i,semi,ii",
                    help="comma-separated arms among i, semi, ii, oracle (default i,semi,ii); semi, ii and the "
                         "oracle train as many epochs as task i, which runs once per seed for them")
    st.add_argument("--split-seeds", default="0,1,2", help="comma-separated split seeds (default 0,1,2)")
    st.add_argument("--out", required=True, help="study folder: split_seed_<s>/ run folders, study.json, study.md")
    st.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value in every run (repeatable)")
    st.add_argument("--resume", action="store_true",
                    help="continue the study in --out: finished stages are kept, others resume from last.pt")
    st.add_argument("--allow-auto-precision", action="store_true",
                    help="accept train.precision (or weak.single_stage.precision) auto, which may choose "
                         "differently from run to run")
    st.add_argument("--results", metavar="FILE",
                    help="also copy study.json to FILE, e.g. benchmarks/results/study_<name>.json "
                         "(benchmarks/study_table.py tabulates those)")
    sw = sub.add_parser("sweep", help="train a task once per combination of config values, then tabulate them "
                                      "(rerun: finished combinations are skipped)")
    sw.add_argument("--config", required=True, help="YAML file in configs/")
    sw.add_argument("--grid", action="append", default=[], required=True, metavar="KEY=V1,V2,...",
                    help="a config key and its values, parsed as --set values (repeatable: the cartesian product)")
    sw.add_argument("--out", required=True, help="sweep folder: one run folder per combination, sweep.md/.json/.png")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value in every combination (repeatable)")
    sw.add_argument("--task", choices=["i", "semi", "ii", "all"], default="i", help="the task each combination runs")
    ev = sub.add_parser("eval", help="re-evaluate a saved checkpoint on the test tiles of its run")
    ev.add_argument("--checkpoint", required=True,
                    help="a run checkpoint .pt, a stage or release folder, a model.zip, its URL or a registry name")
    ev.add_argument("--split", help="split.json (default: the one in the checkpoint's run folder)")
    ev.add_argument("--out", help="report folder (default: beside the checkpoint)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override the checkpoint's config, e.g. --set data.root=/data/vaihingen")
    pu = sub.add_parser("publish", help="write a release folder of a trained model: weights without pickle, "
                                        "model.json, model card, model.zip")
    pu.add_argument("checkpoint", help="a stage folder (RUN/task_ii, RUN/task_i: its best.pt) or a checkpoint .pt")
    pu.add_argument("--out", required=True, help="the release folder to write")
    pu.add_argument("--name", help="the model's name in its card and registry line (default: the --out folder's)")
    pu.add_argument("--force", action="store_true", help="write over a non-empty --out")
    pu.add_argument("--url", help="where model.zip will be served, for the registry line it prints")
    sy = sub.add_parser("synth", help="write the synthetic aerial dataset in the Vaihingen layout")
    sy.add_argument("out", help="output root (gets top/, gts_for_participants/, gts_eroded_for_participants/)")
    sy.add_argument("--tiles", type=int, default=33, help="number of tiles (default 33, the real area numbers)")
    sy.add_argument("--size", type=int, nargs=2, default=[384, 384], metavar=("H", "W"), help="tile size in px")
    sy.add_argument("--seed", type=int, default=0)
    cd = sub.add_parser("check-data", help="check a dataset before training: every problem, one line each "
                                           "(exit code 1 if any)")
    cd.add_argument("--config", required=True, help="YAML file in configs/ (its data and split sections)")
    cd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set data.root=/data/vaihingen (repeatable)")
    cd.add_argument("--split", help="also check a split file (a run's split.json) against the data")
    cd.add_argument("--tags", help="also check a crop tag file (a run's crop_tags.json) against the data")
    _add_predict_args(sub.add_parser("predict", help="segment new images, folders and GeoTIFFs with a checkpoint"))
    _add_export_args(sub.add_parser("export", help="export a checkpoint as ONNX, TorchScript or safetensors"))
    we = sub.add_parser("weights", help="the ImageNet weights configs name: fetch them into the cache before a run "
                                        "needs them ($WSSEG_WEIGHTS_URL: a mirror)")
    weights_actions = we.add_subparsers(dest="action", required=True)
    fetch = weights_actions.add_parser("fetch", help="download NAME once, check it, print where it went")
    fetch.add_argument("name", metavar="NAME", help="resnet38, vgg16, vgg16_bn, vgg11, vgg11_bn, or timm:<a timm "
                                                    "model name> (`wsseg weights list`)")
    weights_actions.add_parser("list", help="the names wsseg fetches, their files and what uses them")
    zo = sub.add_parser("zoomout", help="the zoom-out model's steps one at a time (model.name: zoomout): sample "
                                        "hypercolumns, fit the FC classifier, dense fine-tuning and task i's report")
    zo.add_argument("step", choices=["sample", "fit", "dense"],
                    help="sample: N1 pixels → RUN/zoomout/samples; fit: → RUN/zoomout/classifier; dense: FC → 1×1 "
                         "conv, fine-tuned on N1 crops → RUN/task_i")
    zo.add_argument("--config", required=True, help="YAML file in configs/ (model.name: zoomout)")
    zo.add_argument("--out", required=True, help="the run folder, the same for the three steps")
    zo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (repeatable)")
    zo.add_argument("--resume", action="store_true", help="continue this step from what it left in --out")
    args = parser.parse_args(argv)
    handler = {"train": _train, "study": _study, "sweep": _sweep, "eval": _eval, "check-data": _check_data,
               "publish": _publish, "synth": _synth, "predict": _predict, "export": _export,
               "weights": _weights, "zoomout": _zoomout}[args.command]
    try:
        from wsseg.core.progress import progress_enabled

        progress_enabled()  # a wrong $WSSEG_PROGRESS is one error line now, not a traceback mid-run
        return handler(args)
    except KNOWN_ERRORS as err:
        return report_error(err)


if __name__ == "__main__":
    sys.exit(main())
