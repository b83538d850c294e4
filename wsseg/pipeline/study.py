"""A study: the arms of the comparison asked, over several split seeds, at one precision.

    DIR/split_seed_<s>/   a run folder per split seed (`chain.run_arms`): the stages arms share
                          (task i, the single-stage model) run once, finished stages are kept
    DIR/study.json, .md   per arm: test mIoU per seed and mean ± std, per-class IoU, minutes; the
                          paired differences semi − i, ii − i, ii − semi; the oracle's gap closed

Every difference is taken per seed first (paired) and its mean comes with its sample std: a
margin smaller than the seed-to-seed spread of the difference is not a result.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from wsseg.core.checkpoint import CheckpointError
from wsseg.core.distributed import DistInfo, barrier
from wsseg.core.io import atomic_write_json, score_or_nan
from wsseg.core.metrics import gap_closed
from wsseg.core.provenance import cpu_model, git_commit, git_dirty
from wsseg.core.run_lock import run_folder_held
from wsseg.core.typed import ConfigError
from wsseg.pipeline.chain import check_arms, run_arms
from wsseg.pipeline.config import Config
from wsseg.pipeline.seed_reports import write_study_report
from wsseg.pipeline.seeds import mean_std

log = logging.getLogger(__name__)

ARM_LABELS = {"i": "task i", "semi": "semi", "ii": "task ii", "oracle": "oracle"}
# The stage folder whose done.json holds an arm's test metrics and minutes (task ii: per round, below).
ARM_STAGES = {"i": "task_i", "semi": "semi", "oracle": "oracle"}
# (minuend, subtrahend, what the difference says)
DIFFERENCES = (("semi", "i", "semi − i (what the N2 images bought)"),
               ("ii", "i", "ii − i (what the N2 images and their tags bought)"),
               ("ii", "semi", "ii − semi (what the tags bought)"))


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"split_seed_{seed}"


def check_precision(cfg: Config, allow_auto: bool = False) -> dict[str, str]:
    """The precision every model of the arms trains at. `auto` is refused unless `allow_auto`: it
    times the model at the start of each run, so seeds (and machines) can end up at different
    precisions, and a difference between arms would then be partly one of arithmetic."""
    if cfg.train.precision == "auto" and not allow_auto:
        raise ConfigError("train.precision is auto, which times the model at the start of each run and can choose "
                          "differently from run to run, while a study's arms must run at one precision: pin it "
                          "(--set train.precision=fp32 or bf16), or pass --allow-auto-precision")
    return {"train.precision": cfg.train.precision}


# Overrides whose value is a place on the machine that ran the study: the results file is shared,
# and a path says nothing to its readers.
PATH_KEYS = ("data.root", "weak.tags_file", "model.init_from", "model.encoder_weights")


def shareable(override: str) -> str:
    """`key=value` with a local path replaced by <path> (`PATH_KEYS`)."""
    key, _, value = override.partition("=")
    return f"{key}=<path>" if key.strip() in PATH_KEYS and ("/" in value or "\\" in value) else override


def study_machine() -> dict:
    """What the minutes were measured on (no host name: the results file is shared)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else []}


def run_study(cfg: Config, arms: Sequence[str], seeds: Sequence[int], out: Path, resume: bool = False,
              dist: DistInfo = DistInfo(), *, config_name: str, overrides: Sequence[str] = (),
              allow_auto_precision: bool = False, results_file: Path | None = None) -> dict:
    """Run the `arms` on each split seed into `out/split_seed_<s>/`, then write study.json and
    study.md in `out` (and copy study.json to `results_file` when given). Returns the study dict."""
    arms = check_arms(arms)
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"split seeds {seeds}: give at least one, each once")
    precision = check_precision(cfg, allow_auto_precision)
    out = Path(out)
    started = [p.name for p in (out / "study.json", *(seed_dir(out, s) for s in seeds)) if p.exists()]
    # Every process looks before rank 0 makes the first seed's folder, or a slower one would refuse alone.
    barrier(dist)
    if started and not resume:
        # Checked for every seed before the first trains: a rerun must not add to a study unnoticed.
        raise CheckpointError(f"{out} already holds a study ({', '.join(started)}): pass --resume to continue it, "
                              "or choose another --out")
    with run_folder_held(out, dist.is_main):
        outcomes = {}
        for seed in seeds:
            log.info(f"study: split seed {seed}, arms {', '.join(arms)}")
            seed_cfg = replace(cfg, split=replace(cfg.split, seed=seed))
            outcomes[seed] = run_arms(seed_cfg, arms, seed_dir(out, seed), resume, dist)["arms"]
        if not dist.is_main:
            return {}
        study = {"what": "wsseg study", "config": config_name, "name": cfg.name, "dataset": cfg.data.kind,
                 "overrides": [shareable(o) for o in overrides], "arms": list(arms), "split_seeds": seeds,
                 "precision": precision,
                 "git": {"commit": git_commit(), "dirty": git_dirty()}, "machine": study_machine(),
                 "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                 **summarise_study(outcomes, {s: arm_minutes(seed_dir(out, s), arms) for s in seeds})}
        write_study_report(out, study)
        if results_file is not None:
            atomic_write_json(results_file, study)
            log.info(f"study: results copied to {results_file}")
        return study


def _done(stage_dir: Path) -> dict:
    path = stage_dir / "done.json"
    return json.loads(path.read_text()) if path.exists() else {}


def arm_minutes(run_dir: Path, arms: Sequence[str]) -> dict[str, dict]:
    """Wall minutes of each arm on one seed, from its stages' done.json: {arm: {"total", and for
    task ii "weak_stage" (single-stage model and pseudo masks; None online, where there is none)
    and "segmenter"}}. A stage finished before minutes were recorded gives None."""
    minutes = {}
    for arm in arms:
        if arm != "ii":
            minutes[arm] = {"total": _done(run_dir / ARM_STAGES[arm]).get("minutes")}
            continue
        segmenter = _done(run_dir / "task_ii").get("minutes")
        if not (run_dir / "pseudo_masks").exists():  # weak.mode online: the segmenter is all of it
            minutes[arm] = {"total": segmenter, "weak_stage": None, "segmenter": segmenter}
            continue
        weak = _done(run_dir / "pseudo_masks").get("minutes")
        total = None if weak is None or segmenter is None else weak + segmenter
        minutes[arm] = {"total": total, "weak_stage": weak, "segmenter": segmenter}
    return minutes


def _stat(values) -> dict:
    """Per-seed values (NaN as None in the JSON) with their mean and sample std (ddof 1)."""
    values = [score_or_nan(v) for v in values]
    return {"per_seed": values, **mean_std(values)}


def summarise_study(outcomes: dict[int, dict[str, dict]], minutes: dict[int, dict[str, dict]]) -> dict:
    """The numbers of study.json from each seed's arm metrics ({seed: {arm: done.json}}) and
    minutes ({seed: `arm_minutes`}): classes, results per arm, paired differences, gap closed."""
    seeds = list(outcomes)
    arms = list(outcomes[seeds[0]])
    first = outcomes[seeds[0]][arms[0]]
    classes = list(first["per_class"])
    for seed in seeds:
        for arm, metrics in outcomes[seed].items():
            if list(metrics["per_class"]) != classes:
                raise ValueError(f"split seed {seed}, arm {arm}: classes {list(metrics['per_class'])}, "
                                 f"expected {classes}")

    def miou(arm):
        return [outcomes[s][arm]["miou"] for s in seeds]

    def iou(arm, name):
        return [outcomes[s][arm]["per_class"][name]["iou"] for s in seeds]

    results = {}
    for arm in arms:
        results[arm] = {"label": ARM_LABELS[arm], "miou": _stat(miou(arm)),
                        "per_class": {name: _stat(iou(arm, name)) for name in classes},
                        "minutes": _stat([minutes[s][arm]["total"] for s in seeds]),
                        "epochs_trained": [outcomes[s][arm].get("checkpoint", {}).get("epochs_trained") for s in seeds]}
        if arm == "ii":
            for part in ("weak_stage", "segmenter"):
                results[arm][f"{part}_minutes"] = _stat([minutes[s][arm][part] for s in seeds])

    def paired(a, b):
        return [score_or_nan(x) - score_or_nan(y) for x, y in zip(a, b)]

    differences = {}
    for minuend, subtrahend, label in DIFFERENCES:
        if minuend in arms and subtrahend in arms:
            differences[f"{minuend}_minus_{subtrahend}"] = {
                "label": label, "arms": [minuend, subtrahend], "miou": _stat(paired(miou(minuend), miou(subtrahend))),
                "per_class": {n: _stat(paired(iou(minuend, n), iou(subtrahend, n))) for n in classes}}
    study = {"classes": classes, "classes_in_mean": list(first.get("classes_in_mean", classes)),
             "results": results, "differences": differences}
    if {"i", "ii", "oracle"} <= set(arms):
        def closed(i, ii, oracle):
            return [gap_closed(*scores) for scores in zip(i, ii, oracle)]

        study["gap_closed"] = {"label": "(ii − i) / (oracle − i)",
                               "miou": _stat(closed(miou("i"), miou("ii"), miou("oracle"))),
                               "per_class": {n: _stat(closed(iou("i", n), iou("ii", n), iou("oracle", n)))
                                             for n in classes}}
    return study
