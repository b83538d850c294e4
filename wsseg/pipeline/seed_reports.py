"""The reports over split seeds: task i against task ii as mean ± std (`write_seed_summary`,
`wsseg train --split-seeds`) and the arms of a study (`write_study_report`, `wsseg study`).

They format what `seeds.aggregate_seeds` and the study (`pipeline.study`) computed from the
one-split comparisons (`pipeline.comparison_report`), and compute nothing themselves;
`core.report` gives them its table and number formats.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from wsseg.core.io import atomic_write_json, atomic_write_text, score_or_nan
from wsseg.core.metrics import MIN_GAP
from wsseg.core.report import fmt, fmt_signed, md_table


def _pm(stat: dict, signed: bool = False) -> str:
    mean = fmt_signed(stat["mean"]) if signed else fmt(stat["mean"])
    std = score_or_nan(stat["std"])
    return mean if math.isnan(std) else f"{mean} ± {std:.3f}"


def aggregate_markdown(aggregate: dict, title: str = "Task i vs task ii over split seeds") -> str:
    """Markdown tables (mean ± std over seeds) of an `aggregate_seeds` result."""
    def table(block: dict) -> str:
        rows = [[name, _pm(s["task_i"]), _pm(s["task_ii"]), _pm(s["difference"], signed=True)]
                for name, s in block["per_class"].items()]
        for key, label in (("miou", "**mIoU**"), ("mean_f1", "mean F1"), ("overall_accuracy", "OA")):
            s = block[key]
            rows.append([label, _pm(s["task_i"]), _pm(s["task_ii"]), _pm(s["difference"], signed=True)])
        return md_table(["class (IoU)", "task i", "task ii", "difference (ii − i)"], rows)

    md = [f"# {title}", "", f"{aggregate['num_seeds']} seeds; mean ± sample std (ddof 1); "
          f"mean over {', '.join(aggregate['classes_in_mean'])}.", "", "## Full ground truth", "", table(aggregate)]
    if "eroded" in aggregate:
        md += ["", "## Eroded ground truth", "", table(aggregate["eroded"])]
    if "semi" in aggregate:
        semi = aggregate["semi"]
        md += ["", "## The tag-free arm (N1 + the N2 images without their tags)", "",
               f"Semi mIoU {_pm(semi['miou'])}; semi − task i {_pm(semi['semi_minus_task_i'], signed=True)}; "
               f"what the tags bought, task ii − semi: {_pm(semi['tags_bought'], signed=True)}."]
    if "oracle" in aggregate:
        md += ["", "## Against the oracle (N2 with its true pixel labels)", "",
               f"Oracle mIoU {_pm(aggregate['oracle']['miou'])}; gap closed by task ii, (ii − i) / (oracle − i): "
               f"{_pm(aggregate['oracle']['gap_closed'])}."]
    return "\n".join(md) + "\n"


def write_seed_summary(run_dir: str | Path, summary: dict, seeds: Sequence[int] | None = None,
                       title: str = "Task i vs task ii over split seeds") -> dict[str, Path]:
    """seed_summary.json (the `aggregate_seeds` dict, plus the seeds) and seed_summary.md."""
    run_dir = Path(run_dir)
    if seeds is not None:
        if len(seeds) != summary["num_seeds"]:
            raise ValueError(f"{len(seeds)} seeds given for a summary of {summary['num_seeds']}")
        summary = {**summary, "seeds": list(seeds)}
        title = f"{title} ({', '.join(str(s) for s in seeds)})"
    return {"seed_summary.json": atomic_write_json(run_dir / "seed_summary.json", summary),
            "seed_summary.md": atomic_write_text(run_dir / "seed_summary.md", aggregate_markdown(summary, title))}


# ---------------------------------------------------------------- a study: arms over split seeds

def _per_seed(stat: dict, signed: bool = False, digits: int = 3) -> list[str]:
    return [(fmt_signed if signed else fmt)(v, digits) for v in stat["per_seed"]]


def _pm_minutes(stat: dict) -> str:
    mean, std = score_or_nan(stat["mean"]), score_or_nan(stat["std"])
    return fmt(mean, 1) if math.isnan(std) else f"{fmt(mean, 1)} ± {std:.1f}"


def study_markdown(study: dict) -> str:
    """study.md: test mIoU per arm and seed, the paired differences, per-class IoU and minutes."""
    seeds, results = study["split_seeds"], study["results"]
    seed_cols = [f"seed {s}" for s in seeds]
    commit = study["git"]["commit"]
    code = (f"wsseg {commit[:10]}{' with local changes' if study['git']['dirty'] else ''}" if commit
            else "wsseg (not a git checkout)")
    machine = study["machine"]
    devices = ", ".join(machine.get("cuda_devices") or []) or f"{machine['cpu']}, {machine['cores']} cores"
    overrides = ", ".join(f"`{o}`" for o in study["overrides"]) or "none"
    precision = ", ".join(f"{k} {v}" for k, v in study["precision"].items())
    md = [f"# Study of {study['config']} ({study['dataset']}): {', '.join(r['label'] for r in results.values())}",
          "", f"Split seeds {', '.join(str(s) for s in seeds)}; overrides: {overrides}; {precision}. {code}, "
              f"{devices}, {study['date']}.", "",
          "Test scores; mean ± sample std (ddof 1) over the seeds; every difference is taken per seed "
          f"(paired), then averaged. Mean over {', '.join(study['classes_in_mean'])}.", "",
          "## Test mIoU per arm", ""]
    rows = [[r["label"], *_per_seed(r["miou"]), f"**{_pm(r['miou'])}**", _pm_minutes(r["minutes"]),
             ", ".join("–" if e is None else str(e) for e in r["epochs_trained"])] for r in results.values()]
    md.append(md_table(["arm", *seed_cols, "mean ± std", "minutes", "epochs"], rows))
    if {"i", "ii"} <= set(results):
        md += ["", "Each seed's comparison report: " + ", ".join(f"[seed {s}](split_seed_{s}/comparison.md)"
                                                                 for s in seeds) + "."]
    differences = study["differences"]
    if differences or study.get("gap_closed"):
        rows = [[d["label"], *_per_seed(d["miou"], signed=True), f"**{_pm(d['miou'], signed=True)}**"]
                for d in differences.values()]
        if study.get("gap_closed"):
            gap = study["gap_closed"]
            rows.append([f"gap closed {gap['label']}", *_per_seed(gap["miou"]), f"**{_pm(gap['miou'])}**"])
        md += ["", "## Paired differences (test mIoU)", "", md_table(["difference", *seed_cols, "mean ± std"], rows)]
        if study.get("gap_closed"):
            md += ["", f"– in the gap closed: the oracle beat task i by less than {MIN_GAP} on that seed (no gap)."]
    header = ["class (IoU)", *(r["label"] for r in results.values()), *(d["label"].split(" (")[0]
                                                                       for d in differences.values())]
    rows = []
    for name in study["classes"]:
        label = name if name in study["classes_in_mean"] else f"{name} (not in mean)"
        rows.append([label, *(_pm(r["per_class"][name]) for r in results.values()),
                     *(_pm(d["per_class"][name], signed=True) for d in differences.values())])
    md += ["", "## Per-class IoU (mean ± std)", "", md_table(header, rows), "", "## Minutes per arm and seed", ""]
    rows = [[r["label"], *_per_seed(r["minutes"], digits=1), _pm_minutes(r["minutes"]),
             "weak stage (single-stage model, pseudo masks) " + _pm_minutes(r["weak_stage_minutes"])
             + " + segmenter " + _pm_minutes(r["segmenter_minutes"]) if arm == "ii" else "segmenter"]
            for arm, r in results.items()]
    md += [md_table(["arm", *seed_cols, "mean ± std", "of which"], rows), "",
           "Wall minutes from each stage's done.json (of its last start, when a stage was resumed). Task i, "
           "whose epochs the other arms train, counts in its own arm only."]
    return "\n".join(md) + "\n"


def write_study_report(out_dir: str | Path, study: dict) -> dict[str, Path]:
    """study.json (as given) and study.md in `out_dir`."""
    out_dir = Path(out_dir)
    return {"study.json": atomic_write_json(out_dir / "study.json", study),
            "study.md": atomic_write_text(out_dir / "study.md", study_markdown(study))}
