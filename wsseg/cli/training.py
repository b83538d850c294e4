"""The commands that train: train (task i, semi, ii or all, over split seeds), study, sweep and the
zoom-out model's steps.

Each runs its work under `_until_interrupted`, with the command line that continues it.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path

from wsseg.cli.session import _setup_logging, _until_interrupted
from wsseg.cli.trained_models import _print_scores
from wsseg.pipeline.config_files import load_config

# Where a run goes without --out: runs/<config file name>-<time>, in the working directory.
DEFAULT_RUNS = "runs"

log = logging.getLogger(__name__)


def _train(args) -> int:
    from wsseg.core.distributed import init_distributed
    from wsseg.pipeline.seeds import run_split_seeds
    from wsseg.pipeline.tasks import run_task

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
    run_dir = (Path(args.out) if args.out
               else Path(DEFAULT_RUNS) / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
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
    check_precision(cfg, args.allow_auto_precision)
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
