"""The reports that compare the arms of the weak-semi task: task i against task ii, the semi arm
and the oracle on one split (`write_comparison_report`), the mean ± std over split seeds
(`write_seed_summary`) and the arms of a study over split seeds (`write_study_report`). They
know the tasks, so they live with the stages that run them; `core.report` gives them its
table and number formats.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from wsseg.core.figures import plot_class_bars, plot_triptych
from wsseg.core.io import atomic_write_json, atomic_write_text, score_or_nan
from wsseg.core.metrics import MIN_GAP, gap_closed
from wsseg.core.report import NO_GROUND_TRUTH, fmt, fmt_signed, md_table, safe_name, summary_line
from wsseg.datasets.splits import abbreviated


# ---------------------------------------------------------------- task i vs task ii

def _pseudo_tables(pseudo_quality: dict, class_names) -> list[str]:
    """Top-level scalars, then a per-class table whose columns are whatever keys the entries have."""
    scalars = [(k, v) for k, v in pseudo_quality.items() if k != "per_class" and not isinstance(v, dict)]
    def cell(v):
        if isinstance(v, list):  # e.g. the calibration tiles and the classes never labelled
            # A few names and a count: hundreds of tile ids in one cell make the table unreadable
            # (pseudo_quality.json beside it holds the whole list).
            return abbreviated(v) or "none"
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return str(v)  # counts (tiles, pixels) are not fractions
        return fmt(v) if v is None or isinstance(v, (float, np.floating)) else str(v)
    md = [md_table(["measure", "value"], [[k, cell(v)] for k, v in scalars])]
    per_class = pseudo_quality.get("per_class") or {}
    if per_class:
        columns: list[str] = []
        for name in class_names:
            for key in per_class.get(name, {}):
                if key not in columns:
                    columns.append(key)
        rows = [[name] + [fmt(per_class.get(name, {}).get(c)) for c in columns] for name in class_names]
        md += ["", md_table(["class"] + columns, rows)]
    return md


def _ground_truth_note(pseudo_quality: dict) -> list[str]:
    """What the N2 masks could be scored against, when not every N2 image has a mask (a report
    written before `tiles_with_ground_truth` existed says nothing)."""
    measured, tiles = pseudo_quality.get("tiles_with_ground_truth"), pseudo_quality.get("tiles")
    if measured is None or tiles is None or measured >= tiles:
        return []
    if measured == 0:
        return [f"The {tiles} N2 images have {NO_GROUND_TRUTH} (tagged without a mask): the pseudo masks are "
                "measured on the calibration tiles only (calibration_precision), and there is no N2 mIoU.", ""]
    return [f"{tiles - measured} of the {tiles} N2 images have {NO_GROUND_TRUTH} (tagged without a mask): the N2 "
            f"mIoUs below are over the other {measured}.", ""]


def _pseudo_samples(run_dir: Path, samples, class_names, palette) -> list[str]:
    """A figure per sample (image | pseudo mask | ground truth) and its markdown lines. A tagged
    image without a mask has no ground truth: its panel says so, and so does its line."""
    if not samples:
        return []
    md = ["", "## Pseudo-mask samples", ""]
    if any(gt is None for *_, gt in samples):
        md += [f"{NO_GROUND_TRUTH.capitalize()} for the N2 images tagged without a mask (`weak.tags_file`): their "
               "samples show the image and its pseudo mask only.", ""]
    for tile_id, image, pseudo, gt in samples:
        name = f"pseudo_{safe_name(tile_id)}.png"
        truth = "ground truth" if gt is not None else NO_GROUND_TRUTH
        plot_triptych(run_dir / name, [("image", image), ("pseudo mask", pseudo), (truth, gt)],
                      class_names, palette, f"pseudo mask: {tile_id}")
        md.append(f"- [{tile_id}: image | pseudo mask | {truth}]({name})")
    return md


def _iou_diff_table(task_i: dict, task_ii: dict, class_names, semi: dict | None = None) -> str:
    """Per-class IoU and the means of task i, (semi,) task ii, with ii − i (and ii − semi: what the tags bought)."""
    in_mean = set(task_i.get("classes_in_mean", class_names))
    arms = [task_i] + ([semi] if semi is not None else []) + [task_ii]

    def row(label, values):
        a, b = values[0], values[-1]
        cells = [label, *(fmt(v) for v in values), fmt_signed(b - a)]
        return cells + ([fmt_signed(b - values[1])] if semi is not None else [])

    rows = [row(name if name in in_mean else f"{name} (not in mean)",
                [score_or_nan(m["per_class"][name]["iou"]) for m in arms]) for name in class_names]
    for key, label in (("miou", "**mIoU**"), ("mean_f1", "mean F1"), ("overall_accuracy", "OA")):
        rows.append(row(label, [score_or_nan(m[key]) for m in arms]))
    header = ["class", "task i"] + (["semi"] if semi is not None else []) + ["task ii", "ii − i"]
    return md_table(header + (["ii − semi (what the tags bought)"] if semi is not None else []), rows)


def _minutes_table(arms: Sequence[tuple[str, dict]], pseudo_quality: dict | None) -> str:
    """Wall minutes of each arm's stages (those recorded in their done.json)."""
    rows = []
    for name, metrics in arms:
        minutes = metrics.get("minutes")
        if name == "task ii" and pseudo_quality is not None and pseudo_quality.get("minutes") is not None:
            weak, segmenter = pseudo_quality["minutes"], minutes
            total = weak + segmenter if segmenter is not None else None
            rows.append([name, fmt(total, 1), f"weak stage (single-stage model, pseudo masks) {weak:.1f} + segmenter "
                                                 f"{fmt(segmenter, 1)}"])
        else:
            rows.append([name, fmt(minutes, 1), "segmenter"])
    return md_table(["arm", "minutes", "of which"], rows)


def _gap_closed(task_i: dict, task_ii: dict, oracle: dict, class_names) -> dict:
    return {"miou": gap_closed(task_i["miou"], task_ii["miou"], oracle["miou"]),
            "per_class": {n: gap_closed(task_i["per_class"][n]["iou"], task_ii["per_class"][n]["iou"],
                                        oracle["per_class"][n]["iou"]) for n in class_names}}


def _oracle_table(task_i: dict, task_ii: dict, oracle: dict, gap: dict, class_names) -> str:
    rows = [[n, fmt(task_i["per_class"][n]["iou"]), fmt(task_ii["per_class"][n]["iou"]),
             fmt(oracle["per_class"][n]["iou"]), fmt(gap["per_class"][n])] for n in class_names]
    rows.append(["**mIoU**", fmt(task_i["miou"]), fmt(task_ii["miou"]), fmt(oracle["miou"]), fmt(gap["miou"])])
    return (md_table(["class (IoU)", "task i", "task ii", "oracle", "gap closed (ii − i) / (oracle − i)"], rows)
            + f"\n\n– where the oracle beats task i by less than {MIN_GAP}: no gap to close.")


def write_comparison_report(
    run_dir: str | Path,
    task_i: dict,
    task_ii: dict,
    pseudo_quality: dict | None,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    samples: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
    oracle: dict | None = None,
    semi: dict | None = None,
) -> dict:
    """Compare task i (pixel labels only) with task ii (plus tags): comparison.json/.md and figures.

    `oracle` (optional, same schema): the segmenter trained on N2's true labels; the report then
    adds it and the gap task ii closes, (ii − i) / (oracle − i), per class and for mIoU.
    `semi` (optional, same schema): the tag-free arm, N1 + the N2 images without tags; the report
    then adds what the tags bought, ii − semi.

    `task_i`, `task_ii` follow the `segmentation_metrics` schema ("eroded" optional).
    `pseudo_quality` (or None) has scalars such as coverage, miou_raw, miou_crf, miou_final and a
    "per_class" dict of per-class numbers; every key found is tabulated. `samples` are
    (tile_id, image uint8 H×W×3, pseudo mask uint8 H×W, ground truth uint8 H×W or None where the
    image has no mask).
    Returns the comparison dict written to comparison.json, the unit `aggregate_seeds` takes.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    class_names = list(class_names)
    comparison = {"task_i": task_i, "task_ii": task_ii, "pseudo_masks": pseudo_quality}
    arms = [("task i", task_i)] + ([("semi", semi)] if semi is not None else []) + [("task ii", task_ii)]
    if semi is not None:
        comparison["semi"] = semi
        comparison["tags_bought"] = {"miou": score_or_nan(task_ii["miou"]) - score_or_nan(semi["miou"]),
                                     "per_class": {n: score_or_nan(task_ii["per_class"][n]["iou"])
                                                   - score_or_nan(semi["per_class"][n]["iou"]) for n in class_names}}
    if oracle is not None:
        comparison["oracle"] = oracle
        comparison["gap_closed"] = _gap_closed(task_i, task_ii, oracle, class_names)
        arms.append(("oracle", oracle))
    atomic_write_json(run_dir / "comparison.json", comparison)

    plot_class_bars(
        run_dir / "comparison_iou.png", [(name, [m["per_class"][n]["iou"] for n in class_names]) for name, m in arms],
        class_names, palette, "IoU", f"per-class IoU: {' vs '.join(name for name, _ in arms)}",
        [(f"mIoU {name}", m["miou"]) for name, m in arms])

    title = "# Task i vs semi vs task ii" if semi is not None else "# Task i vs task ii"
    md = [title, "", *(f"- {name}: {summary_line(m)}" for name, m in arms)]
    if semi is not None:
        md += ["", f"What the tags bought (task ii − semi, which used the same N2 images without tags): "
                   f"**{fmt_signed(comparison['tags_bought']['miou'])}** mIoU; task ii − task i: "
                   f"{fmt_signed(score_or_nan(task_ii['miou']) - score_or_nan(task_i['miou']))}."]
    md += ["", "## Per-class IoU (full ground truth)", "", _iou_diff_table(task_i, task_ii, class_names, semi)]
    if task_i.get("eroded") and task_ii.get("eroded") and (semi is None or semi.get("eroded")):
        md += ["", "## Per-class IoU (eroded ground truth)", "",
               _iou_diff_table(task_i["eroded"], task_ii["eroded"], class_names, semi["eroded"] if semi else None)]
    md += ["", "## Minutes per arm", "", _minutes_table(arms, pseudo_quality)]
    if oracle is not None:
        md += ["", "## Against the oracle (N2 with its true pixel labels, experiments only)", "",
               f"- oracle: {summary_line(oracle)}", "", _oracle_table(task_i, task_ii, oracle, comparison["gap_closed"],
                                                                      class_names)]
    md += ["", f"![IoU {' vs '.join(name for name, _ in arms)}](comparison_iou.png)"]
    if pseudo_quality is not None:
        md += ["", "## Pseudo-mask quality", ""]
        md += _ground_truth_note(pseudo_quality)
        md += _pseudo_tables(pseudo_quality, class_names)
    md += _pseudo_samples(run_dir, samples, class_names, palette)
    atomic_write_text(run_dir / "comparison.md", "\n".join(md) + "\n")
    return comparison


# ---------------------------------------------------------------- several split seeds

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
