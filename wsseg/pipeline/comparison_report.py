"""The report that compares the arms of the weak-semi task on one split: task i against task ii,
the semi arm and the oracle (`write_comparison_report`), with the pseudo masks' quality. It
knows the tasks, so it lives with the stages that run them; `core.report` gives it its table and
number formats. The reports over split seeds are `pipeline.seed_reports`'.
"""

from __future__ import annotations

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
