"""One task, or one zoom-out step, in a run folder under its run lock: what `wsseg train` and
`wsseg zoomout` start.

    run_task          task i, semi or ii alone, or `all`: the arms i, semi, ii (and the oracle)
                      through `chain.run_arms`
    run_zoomout_step  sample, fit or dense of the zoom-out model, one command at a time

Each prepares the run (`pipeline.data.prepare_run`) and hands it to the stages of
`pipeline.chain`; they sit above the chain, which knows nothing of commands, so that a stage
is the same function whichever command reached it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wsseg.core.checkpoint import CheckpointError
from wsseg.core.distributed import DistInfo
from wsseg.core.run_lock import run_folder_held
from wsseg.core.typed import ConfigError
from wsseg.pipeline.chain import run_arms, run_semi, run_task_i, run_task_ii
from wsseg.pipeline.config import Config
from wsseg.pipeline.data import prepare_run
from wsseg.pipeline.segmenter import check_init_from
from wsseg.pipeline.zoomout import (ZOOMOUT, check_zoomout_config, classifier_dir, finished, fit_classifier,
                                    sample_hypercolumns, samples_dir)

TASKS = ("i", "semi", "ii", "all")


def run_task(cfg: Config, task: str, run_dir: Path, resume: bool = False, dist: DistInfo = DistInfo(),
             oracle: bool = False) -> dict:
    """Run task `i`, `ii` or `all` into `run_dir`; returns the metrics (or the comparison).

    `oracle` (with `all`): also train on N1 + N2 with N2's true pixel labels, at the same steps,
    and report the share of the oracle's gain that task ii closes."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} ({', '.join(TASKS)})")
    if oracle and task != "all":
        raise ValueError("the oracle is a third arm of the comparison: use it with --task all")
    if task == "all":
        arms = run_arms(cfg, ("i", "semi", "ii") + (("oracle",) if oracle else ()), run_dir, resume, dist)
        return arms.get("comparison") or {}
    with run_folder_held(run_dir, dist.is_main):
        return _run_task(cfg, task, run_dir, resume, dist)


def _run_task(cfg: Config, task: str, run_dir: Path, resume: bool, dist: DistInfo) -> dict:
    run = prepare_run(cfg, run_dir, resume, dist, weak=task == "ii")
    check_init_from(run)
    if task == "i":
        return run_task_i(run)
    if task == "semi":
        return run_semi(run)
    return run_task_ii(run)[0]


ZOOMOUT_STEPS = ("sample", "fit", "dense")


def run_zoomout_step(cfg: Config, step: str, run_dir: Path, resume: bool = False, dist: DistInfo = DistInfo()) -> dict:
    """One step of the zoom-out model in `run_dir` (`wsseg zoomout STEP`): `sample` starts the run
    (or continues it with `resume`); `fit`, then `dense`, continue the run it started, each from
    its own last checkpoint with `resume`. `dense` is task i's segmenter stage, report included.
    Returns the step's `done.json` (task i's metrics for `dense`)."""
    if step not in ZOOMOUT_STEPS:
        raise ValueError(f"unknown zoom-out step {step!r} ({', '.join(ZOOMOUT_STEPS)})")
    if cfg.model.name != ZOOMOUT:
        raise ConfigError(f"wsseg zoomout needs model.name: {ZOOMOUT}; the config has {cfg.model.name!r}")
    if step != "sample" and not (run_dir / "config.yaml").exists():
        raise CheckpointError(f"{run_dir} holds no run: start it with `wsseg zoomout sample --out {run_dir}`")
    with run_folder_held(run_dir, dist.is_main):
        # The later steps continue the run folder that `sample` made; `resume` then concerns their own checkpoints.
        run = prepare_run(cfg, run_dir, resume or step != "sample", dist, weak=False)
        run = dataclasses.replace(run, resume=resume)
        check_zoomout_config(cfg, run.source.classes)
        if step == "sample":
            return sample_hypercolumns(run)
        if step == "fit":
            if finished(samples_dir(run_dir)) is None:
                raise CheckpointError(f"no finished samples in {samples_dir(run_dir)}: run `wsseg zoomout sample` "
                                      f"first")
            return fit_classifier(run)
        if finished(classifier_dir(run_dir)) is None:
            raise CheckpointError(f"no finished classifier in {classifier_dir(run_dir)}: run `wsseg zoomout fit` first")
        return run_task_i(run)
