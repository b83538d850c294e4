"""`wsseg sweep`: one run of a task per combination of a grid of config values, then one table.

    parse_grid   ["train.optimizer=adam,adamw"] → [("train.optimizer", ["adam", "adamw"])]
    plan_sweep   the cartesian product → a `SweepRun` per combination (its folder, its overrides, its
                 config), every one validated against the config and the data before anything trains
                 (both in `pipeline.sweep_plan`)
    run_sweep    runs the combinations not finished yet, each with `tasks.run_task` in its own folder,
                 then collects their metrics into sweep.json, sweep.md and sweep.png

A combination's folder is named after it (`train.optimizer=adam`, keys joined by commas) and is an
ordinary run folder: `wsseg eval`, `wsseg publish` and `--resume` work on it as on any other. A
rerun of the same sweep skips the combinations whose stages wrote `done.json` and resumes the
others from their last checkpoint, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from wsseg.core.checkpoint import load_checkpoint
from wsseg.core.distributed import DistInfo
from wsseg.core.io import atomic_write_json, score_or_nan
from wsseg.core.report import write_sweep_report
from wsseg.pipeline.config import Config
from wsseg.pipeline.sweep_plan import Sweep, SweepRun
from wsseg.pipeline.tasks import run_task

log = logging.getLogger(__name__)

SWEEP_RUN = "sweep_run.json"


def stage_dirs(cfg: Config, task: str, run_dir: Path) -> dict[str, Path]:
    """The stage folders whose metrics are task `task`'s result, by label: task i's, the semi
    arm's, task ii's, or all three."""
    stages = {}
    if task in ("i", "all"):
        stages["task i"] = run_dir / "task_i"
    if task in ("semi", "all"):
        stages["semi"] = run_dir / "semi"
    if task in ("ii", "all"):
        stages["task ii"] = run_dir / "task_ii"
    return stages


def is_finished(run: SweepRun, task: str) -> bool:
    """Every stage of the task wrote its done.json (and `all` its comparison)."""
    done = all((folder / "done.json").exists() for folder in stage_dirs(run.cfg, task, run.run_dir).values())
    return done and (task != "all" or (run.run_dir / "comparison.json").exists())


@contextmanager
def _log_into(run_dir: Path, enabled: bool) -> Iterator[None]:
    """The combination's own log.txt, beside the sweep's, as `wsseg train` would write it."""
    if not enabled:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def validation_history(stage_dir: Path) -> list[dict]:
    """(epoch, validation mIoU) of each validated epoch, from the stage's last checkpoint."""
    path = stage_dir / "last.pt"
    if not path.exists():
        return []
    history = load_checkpoint(path, map_location="cpu").get("history", [])
    return [{"epoch": int(row["epoch"]), "val_miou": row["val_miou"]} for row in history
            if row.get("val_miou") is not None]


def _read_record(run_dir: Path) -> dict:
    path = run_dir / SWEEP_RUN
    return json.loads(path.read_text()) if path.exists() else {}


def _run_one(run: SweepRun, task: str, dist: DistInfo) -> None:
    """Train and evaluate one combination; its wall time, summed over interrupted attempts, and
    the validation curves of its stages go into its sweep_run.json (read once from the checkpoints)."""
    record = _read_record(run.run_dir)
    earlier_s = float(record.get("wall_s") or 0.0)
    resume = (run.run_dir / "config.yaml").exists()
    log.info(f"sweep: {'resuming' if resume else 'running'} {run.name} (task {task}) in {run.run_dir}")
    started = time.perf_counter()
    finished = False
    try:
        with _log_into(run.run_dir, dist.is_main):
            run_task(run.cfg, task, run.run_dir, resume, dist)
        finished = True
    finally:
        if dist.is_main:
            record = {"combination": run.name, "overrides": dict(run.overrides), "task": task, "finished": finished,
                      "wall_s": earlier_s + time.perf_counter() - started,
                      "attempts": int(record.get("attempts", 0)) + 1}
            if finished:
                record["history"] = {label: validation_history(folder)
                                     for label, folder in stage_dirs(run.cfg, task, run.run_dir).items()}
            atomic_write_json(run.run_dir / SWEEP_RUN, record)


def _stage_row(folder: Path, history: list[dict]) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    scored = [row for row in history if row.get("val_miou") is not None]
    best = max(scored, key=lambda row: score_or_nan(row["val_miou"]), default=None)
    return {"miou": metrics.get("miou"), "mean_f1": metrics.get("mean_f1"),
            "overall_accuracy": metrics.get("overall_accuracy"),
            "best_val_miou": best["val_miou"] if best else None, "best_val_epoch": best["epoch"] if best else None,
            "history": history}


def collect(runs: list[SweepRun], task: str) -> list[dict]:
    """Each finished combination's scores (from its stages' metrics.json) and curves, in grid order."""
    rows = []
    for run in runs:
        if not is_finished(run, task):
            continue
        record = _read_record(run.run_dir)
        histories = record.get("history") or {}
        stages = {}
        for label, folder in stage_dirs(run.cfg, task, run.run_dir).items():
            # A run finished by an earlier `wsseg train` has no record: its curve comes from the checkpoint.
            history = histories[label] if label in histories else validation_history(folder)
            stages[label] = _stage_row(folder, history)
        rows.append({"combination": run.name, "folder": run.run_dir.name, "overrides": dict(run.overrides),
                     "wall_s": record.get("wall_s"), "attempts": record.get("attempts"), "stages": stages})
    return rows


def run_sweep(sweep: Sweep, dist: DistInfo = DistInfo()) -> dict:
    """Run every combination of a planned sweep not finished yet, then write sweep.json, sweep.md
    and sweep.png into its folder; returns what sweep.json holds."""
    runs, task = sweep.runs, sweep.task
    log.info(f"sweep of {len(runs)} combination(s) of {', '.join(k for k, _ in sweep.grid)} into {sweep.out_dir}")
    for number, run in enumerate(runs, 1):
        if is_finished(run, task):
            log.info(f"sweep {number}/{len(runs)}: {run.name} already finished, skipped")
            continue
        log.info(f"sweep {number}/{len(runs)}: {run.name}")
        _run_one(run, task, dist)
    summary = {"config": sweep.config, "task": task, "grid": {key: list(values) for key, values in sweep.grid},
               "overrides": list(sweep.overrides), "runs": collect(list(runs), task)}
    if dist.is_main:
        write_sweep_report(sweep.out_dir, summary)
