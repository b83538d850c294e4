"""Task i vs task ii repeated over split seeds, and the statistics that say whether the gain holds.

A margin smaller than the seed-to-seed spread of the gain is not a result: every difference is
taken per seed first (paired), and its mean comes with its sample standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from wsseg.core.distributed import DistInfo
from wsseg.core.io import score_or_nan
from wsseg.pipeline.config import Config
from wsseg.pipeline.seed_reports import write_seed_summary
from wsseg.pipeline.tasks import run_task


def run_split_seeds(cfg: Config, seeds: list[int], run_dir: Path, resume: bool = False,
                    dist: DistInfo = DistInfo(), oracle: bool = False) -> dict:
    """Repeat `--task all` over several split seeds and report mean ± std per class."""
    comparisons = []
    for seed in seeds:
        seed_cfg = replace(cfg, split=replace(cfg.split, seed=seed))
        comparisons.append(run_task(seed_cfg, "all", run_dir / f"split_seed_{seed}", resume, dist, oracle))
    if not dist.is_main:
        return {}
    summary = aggregate_seeds(comparisons)
    write_seed_summary(run_dir, summary, seeds)
    return summary


def mean_std(values) -> dict:
    """Mean and sample standard deviation (ddof=1) over the finite values; std is NaN below two."""
    finite = [v for v in (score_or_nan(x) for x in values) if not math.isnan(v)]
    n = len(finite)
    mean = float(np.mean(finite)) if n else float("nan")
    std = float(np.std(finite, ddof=1)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "n": n}


def _aggregate_pairs(pairs: Sequence[tuple[dict, dict]], class_names) -> dict:
    """Per seed the difference is taken first (paired), then averaged: its std is the seed-to-seed
    spread of the gain, which is what says whether task ii reliably beats task i."""
    out = {"per_class": {}}
    for name in class_names:
        a = [score_or_nan(i["per_class"][name]["iou"]) for i, _ in pairs]
        b = [score_or_nan(ii["per_class"][name]["iou"]) for _, ii in pairs]
        out["per_class"][name] = {"task_i": mean_std(a), "task_ii": mean_std(b),
                                  "difference": mean_std([y - x for x, y in zip(a, b)])}
    for key in ("miou", "mean_f1", "overall_accuracy"):
        a = [score_or_nan(i[key]) for i, _ in pairs]
        b = [score_or_nan(ii[key]) for _, ii in pairs]
        out[key] = {"task_i": mean_std(a), "task_ii": mean_std(b),
                    "difference": mean_std([y - x for x, y in zip(a, b)])}
    return out


def aggregate_seeds(comparisons: Sequence[dict]) -> dict:
    """Mean ± std over split seeds of comparison dicts ({"task_i", "task_ii", ...}, e.g. loaded
    from comparison.json): per-class IoU, mIoU, mean F1 and OA for task i, task ii and their
    difference (ii − i). Eroded scores are aggregated too when every seed has them."""
    if not comparisons:
        raise ValueError("aggregate_seeds needs at least one comparison")
    first = comparisons[0]["task_i"]
    class_names = list(first["per_class"])
    for k, comp in enumerate(comparisons):
        for task in ("task_i", "task_ii"):
            if list(comp[task]["per_class"]) != class_names:
                raise ValueError(f"comparison {k} {task} has classes {list(comp[task]['per_class'])}, "
                                 f"expected {class_names}")
    pairs = [(c["task_i"], c["task_ii"]) for c in comparisons]
    result = {"num_seeds": len(comparisons), "classes": class_names,
              "classes_in_mean": list(first.get("classes_in_mean", class_names))}
    result.update(_aggregate_pairs(pairs, class_names))
    if all(i.get("eroded") and ii.get("eroded") for i, ii in pairs):
        result["eroded"] = _aggregate_pairs([(i["eroded"], ii["eroded"]) for i, ii in pairs], class_names)
    if all(c.get("semi") for c in comparisons):
        result["semi"] = {"miou": mean_std([c["semi"]["miou"] for c in comparisons]),
                          "tags_bought": mean_std([c["tags_bought"]["miou"] for c in comparisons]),
                          "semi_minus_task_i": mean_std([score_or_nan(c["semi"]["miou"])
                                                          - score_or_nan(c["task_i"]["miou"]) for c in comparisons])}
    if all(c.get("oracle") for c in comparisons):
        result["oracle"] = {"miou": mean_std([c["oracle"]["miou"] for c in comparisons]),
                            "gap_closed": mean_std([c["gap_closed"]["miou"] for c in comparisons])}
    return result
