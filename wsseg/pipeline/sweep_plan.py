"""A sweep planned before anything trains: the `--grid` parsed, the cartesian product of its
values, a folder name and a config per combination, every config checked against the data.

An unknown key, a bad value or a split the data cannot give fails here, before the first
combination trains, not after the others have; so does a combination folder holding a run of
another config. `pipeline.sweep` runs what is planned.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from wsseg.core.typed import ConfigError
from wsseg.datasets.base import DataProblemsError, DatasetError
from wsseg.pipeline.config import Config, config_to_dict
from wsseg.pipeline.config_checks import check_config, check_weight_files
from wsseg.pipeline.config_files import load_config, saved_config_from_dict
from wsseg.pipeline.data import listed_source, make_split_for
from wsseg.pipeline.tasks import TASKS

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
