"""`wsseg sweep`: one run of a task per combination of a grid of config values, then one table.

    parse_grid   ["train.optimizer=adam,adamw"] → [("train.optimizer", ["adam", "adamw"])]
    plan_sweep   the cartesian product → a `SweepRun` per combination (its folder, its overrides, its
                 config), every one validated against the config and the data before anything trains
    run_sweep    runs the combinations not finished yet, each with `chain.run_task` in its own folder,
                 then collects their metrics into sweep.json, sweep.md and sweep.png

A combination's folder is named after it (`train.optimizer=adam`, keys joined by commas) and is an
ordinary run folder: `wsseg eval`, `wsseg publish` and `--resume` work on it as on any other. A
rerun of the same sweep skips the combinations whose stages wrote `done.json` and resumes the
others from their last checkpoint, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from wsseg.core.checkpoint import load_checkpoint
from wsseg.core.config import Config, ConfigError, config_to_dict, load_config, saved_config_from_dict
from wsseg.core.distributed import DistInfo
from wsseg.core.io import atomic_write_json, score_or_nan
from wsseg.core.report import write_sweep_report
from wsseg.datasets.base import DataProblemsError, DatasetError
from wsseg.pipeline.chain import TASKS, run_task
from wsseg.pipeline.config_checks import check_config, check_weight_files
from wsseg.pipeline.data import listed_source, make_split_for

log = logging.getLogger(__name__)

SWEEP_RUN = "sweep_run.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")


def split_values(raw: str) -> list[str]:
    """`raw` split at its top-level commas: a YAML list or mapping (`[1, 2]`, `{adamw: 0.004}`) or
    a quoted string stays one value."""
    values, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(raw):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(raw[start:i].strip())
            start = i + 1
    values.append(raw[start:].strip())
    return values


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """`--grid key=v1,v2,...` options → (key, raw values), in the order given. Each value is
    later parsed as a `--set` value is (YAML), so `1e-3`, `true` and `[1, 2]` mean what they do there."""
    if not items:
        raise ConfigError("a sweep needs at least one --grid key=v1,v2,...")
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} is not of the form key=v1,v2,...")
        key, raw = (part.strip() for part in item.split("=", 1))
        values = split_values(raw)
        if not key or any(not v for v in values):
            raise ConfigError(f"--grid {item!r}: a key and comma-separated values, none empty")
        if key in (k for k, _ in grid):
            raise ConfigError(f"--grid {key} is given twice: put all its values in one --grid")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"--grid {key}: value {repeated[0]!r} is given twice")
        grid.append((key, values))
    return grid


def combination_name(overrides: list[tuple[str, str]]) -> str:
    """The folder name of a combination: `key=value` pairs joined by commas, in the grid's order,
    with characters that do not belong in a file name (a path's slashes) replaced by `_`."""
    return _UNSAFE.sub("_", ",".join(f"{key}={value}" for key, value in overrides))


@dataclass(frozen=True)
class SweepRun:
    """One combination of the grid: its name, its run folder, its `key=value` overrides and its config."""

    name: str
    run_dir: Path
    overrides: tuple[tuple[str, str], ...]
    cfg: Config


@dataclass(frozen=True)
class Sweep:
    """A planned sweep: what it varies, over which config and task, and its combinations in grid order."""

    config: str
    grid: tuple[tuple[str, tuple[str, ...]], ...]
    overrides: tuple[str, ...]
    task: str
    out_dir: Path
    runs: tuple[SweepRun, ...]


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


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _flat_config(cfg: Config) -> dict:
    """`cfg` as dotted keys, its values as YAML writes them (tuples as lists), so that two configs compare."""
    return _flat(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg), sort_keys=False)))


def _check_same_config(run: SweepRun) -> None:
    """A combination's folder that holds a run of another config (the sweep's --set changed since)
    would report that run's numbers under this name: an error, not a silent resume."""
    saved_path = run.run_dir / "config.yaml"
    if not saved_path.exists():
        return
    # Read as a checkpoint's config is: a key retired since that run is no difference.
    saved = _flat_config(saved_config_from_dict(yaml.safe_load(saved_path.read_text()) or {}))
    wanted = _flat_config(run.cfg)
    differ = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise ConfigError(f"{run.run_dir} holds a run of another config ({shown}{more}): choose another --out, "
                          f"or remove that folder to run the combination again")


def plan_sweep(config: str | Path, grid: list[tuple[str, list[str]]], out_dir: str | Path,
               overrides: list[str] = (), task: str = "i") -> Sweep:
    """Every combination of `grid`, its config validated as `wsseg train` validates one, against
    the data too: an unknown key, a bad value or a split the data cannot give fails here, before
    the first combination trains, not after the others have."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} ({', '.join(TASKS)})")
    set_keys = {item.split("=", 1)[0].strip() for item in overrides if "=" in item}
    both = [key for key, _ in grid if key in set_keys]
    if both:
        raise ConfigError(f"{both[0]} is both in --set and in --grid: give it in one place")
    runs, names, sources = [], {}, {}
    for values in itertools.product(*(vals for _, vals in grid)):
        combination = tuple((key, value) for (key, _), value in zip(grid, values))
        name = combination_name(list(combination))
        if name in names:
            raise ConfigError(f"--grid combinations {names[name]} and {combination} both make the folder name "
                              f"{name!r}")
        names[name] = combination
        where = ", ".join(f"{k}={v}" for k, v in combination)
        try:
            cfg = load_config(config, [*overrides, *(f"{k}={v}" for k, v in combination)])
            check_config(cfg)
            # One listing per dataset the grid asks for: most grids vary training, not data.
            data_key = json.dumps(config_to_dict(cfg.data), sort_keys=True)
            if data_key not in sources:
                sources[data_key] = listed_source(cfg)[0]
            check_config(cfg, sources[data_key], weak=task != "i")
            check_weight_files(cfg, weak=task != "i")
            make_split_for(cfg, sources[data_key])
        except DataProblemsError:
            raise  # its own lines name every file at fault
        except (ConfigError, DatasetError) as err:
            fix = {"fix": err.fix} if isinstance(err, DatasetError) else {}
            raise type(err)(f"sweep combination {where}: {err}", **fix) from None
        run = SweepRun(name, Path(out_dir) / name, combination, cfg)
        _check_same_config(run)
        runs.append(run)
    return Sweep(str(config), tuple((key, tuple(values)) for key, values in grid), tuple(overrides), task,
                 Path(out_dir), tuple(runs))


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
    return summary
