"""Run reports: metrics JSON, a markdown summary and the figures a reader checks first.

One evaluated run (`write_report`) and the runs of a grid sweep (`write_sweep_report`), plus the
table and number formats the task reports (`pipeline.comparison_report`) share. JSON is written
atomically (`core.io`), NaN scores (classes absent from the evaluated pixels, see
`core.metrics`) as null.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from wsseg.core.figures import plot_class_bars, plot_confusion, plot_curves, plot_sweep_curves, plot_triptych
from wsseg.core.io import atomic_write_json, atomic_write_text, score_or_nan

# A sample's third panel and its markdown line when its image has no mask (a user-tagged N2 image).
NO_GROUND_TRUTH = "no ground truth"
# Where write_report looks for `metrics.majority_baseline_miou(...)`; both spellings are in use.
BASELINE_KEYS = ("majority_baseline_miou", "baseline_majority_miou")


def safe_name(tile_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(tile_id))


def fmt(value, digits: int = 3) -> str:
    value = score_or_nan(value)
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_signed(value, digits: int = 3) -> str:
    value = score_or_nan(value)
    return "–" if math.isnan(value) else f"{value:+.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- single run

def _class_rows(metrics: dict, class_names) -> list[list[str]]:
    eroded = metrics.get("eroded")
    in_mean = set(metrics.get("classes_in_mean", class_names))
    rows = []
    for name in class_names:
        pc = metrics["per_class"][name]
        row = [name, "yes" if name in in_mean else "no", fmt(pc["iou"]), fmt(pc["f1"]),
               fmt(pc["precision"]), fmt(pc["recall"]), str(pc["support"])]
        if eroded:
            row += [fmt(eroded["per_class"][name]["iou"]), fmt(eroded["per_class"][name]["f1"])]
        rows.append(row)
    mean_row = [f"**mean ({len(in_mean)} classes)**", "", fmt(metrics["miou"]), fmt(metrics["mean_f1"]), "", "", ""]
    if eroded:
        mean_row += [fmt(eroded["miou"]), fmt(eroded["mean_f1"])]
    rows.append(mean_row)
    return rows


def summary_line(metrics: dict, label: str = "") -> str:
    parts = [f"mIoU **{fmt(metrics['miou'])}**", f"mean F1 {fmt(metrics['mean_f1'])}",
             f"OA {fmt(metrics['overall_accuracy'])}"]
    for key in BASELINE_KEYS:
        if key in metrics:
            parts.append(f"majority baseline mIoU {fmt(metrics[key])}")
            break
    return (f"{label}: " if label else "") + " · ".join(parts)


def metrics_summary(metrics: dict) -> list[str]:
    """The mean scores of one evaluation (full and, when there, eroded ground truth), as markdown lines."""
    md = [summary_line(metrics, "full ground truth")]
    if metrics.get("eroded"):
        md += ["", summary_line(metrics["eroded"], "eroded ground truth")]
    if metrics.get("max_f"):
        road = metrics["max_f"]
        md += ["", f"{road['class']}, every threshold of its probability (KITTI Road measures, image domain): "
                   f"MaxF **{fmt(road['max_f'])}** · precision {fmt(road['precision'])} · recall "
                   f"{fmt(road['recall'])} at threshold {fmt(road['threshold'])} · "
                   f"average precision {fmt(road['average_precision'])}"]
    if metrics.get("xview2"):
        xview2 = metrics["xview2"]
        md += ["", f"xView2 score **{fmt(xview2['score'])}** = 0.3 × localisation F1 "
                   f"{fmt(xview2['localisation_f1'])} + 0.7 × damage F1 {fmt(xview2['damage_f1'])} (harmonic mean of "
                   + ", ".join(f"{name} {fmt(f1)}" for name, f1 in xview2["grade_f1"].items()) + ")"]
    return md


def per_class_table(metrics: dict, class_names) -> str:
    """The markdown table of per-class scores of one evaluation, with the mean row."""
    header = ["class", "in mean", "IoU", "F1", "precision", "recall", "support (px)"]
    if metrics.get("eroded"):
        header += ["IoU eroded", "F1 eroded"]
    return md_table(header, _class_rows(metrics, class_names))


def write_report(
    run_dir: str | Path,
    metrics: dict,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    history: Sequence[dict],
    samples: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    title: str,
    confusion: np.ndarray | None = None,
) -> dict[str, Path]:
    """Write metrics.json, report.md and the figures of one evaluated run into `run_dir`.

    `metrics` is the `segmentation_metrics` schema (optionally with an "eroded" sub-dict and a
    top-level "majority_baseline_miou" or "baseline_majority_miou"); it is saved as given. The
    confusion figure needs the matrix itself: pass `confusion` (C×C, rows = ground truth) or put
    it in `metrics["confusion_matrix"]` (as `EvalResult.metrics` does); without either it is
    skipped. `history`
    rows have epoch, train_loss, val_miou, lr and any other numbers. `samples` are
    (tile_id, image uint8 H×W×3, ground truth uint8 H×W, prediction uint8 H×W).
    Returns the written paths by short name.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    class_names = list(class_names)
    written = {"metrics.json": atomic_write_json(run_dir / "metrics.json", metrics)}

    series = [("full GT", [metrics["per_class"][n]["iou"] for n in class_names])]
    mean_lines = [("mIoU", metrics["miou"])]
    if metrics.get("eroded"):
        series.append(("eroded GT", [metrics["eroded"]["per_class"][n]["iou"] for n in class_names]))
        mean_lines.append(("mIoU eroded", metrics["eroded"]["miou"]))
    written["iou_bars.png"] = plot_class_bars(run_dir / "iou_bars.png", series, class_names, palette,
                                              "IoU", f"{title}: per-class IoU", mean_lines)
    if confusion is None and "confusion_matrix" in metrics:
        confusion = np.asarray(metrics["confusion_matrix"])
    if confusion is not None:
        written["confusion.png"] = plot_confusion(run_dir / "confusion.png", confusion, class_names,
                                                  f"{title}: confusion (row-normalised)")
    if history:
        written["curves.png"] = plot_curves(run_dir / "curves.png", history)
    triptychs = []
    for tile_id, image, gt, pred in samples:
        name = f"triptych_{safe_name(tile_id)}.png"
        written[name] = plot_triptych(run_dir / name, [("image", image), ("ground truth", gt), ("prediction", pred)],
                                      class_names, palette, f"{title}: {tile_id}")
        triptychs.append((tile_id, name))

    md = [f"# {title}", "", *metrics_summary(metrics)]
    if metrics.get("skipped_tiles"):
        skipped = metrics["skipped_tiles"]
        md += ["", (f"{len(skipped)} tile(s) were left out of this run for bad files (`data.skip_bad_files`; "
                    f"their problems are in the run folder's skipped_files.json): {', '.join(skipped)}.")]
    md += ["", "## Per class", "", per_class_table(metrics, class_names), "",
           "Scores are fractions (0–1) from one confusion matrix over all evaluated pixels; "
           "overall accuracy includes classes outside the mean; – marks a class absent from "
           "both ground truth and prediction.", "", "## Figures", "", "![per-class IoU](iou_bars.png)"]
    if "confusion.png" in written:
        md.append("![confusion matrix](confusion.png)")
    if "curves.png" in written:
        md.append("![training curves](curves.png)")
    for tile_id, name in triptychs:
        md.append(f"- [{tile_id}: image | ground truth | prediction]({name})")
    written["report.md"] = atomic_write_text(run_dir / "report.md", "\n".join(md) + "\n")
    return written


# ---------------------------------------------------------------- a grid sweep

def _duration(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(float(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def sweep_markdown(summary: dict) -> str:
    """The table of a sweep: one row per combination (and stage, for `--task all`)."""
    several = summary["task"] == "all"
    header = ["combination"] + (["task"] if several else []) + ["test mIoU", "mean F1", "best val mIoU",
                                                                 "best epoch", "wall time"]
    cells = [(run, label, stage) for run in summary["runs"] for label, stage in run["stages"].items()]
    best_val = max((score_or_nan(s["best_val_miou"]) for _, _, s in cells
                    if not math.isnan(score_or_nan(s["best_val_miou"]))), default=None)
    rows = []
    for run, label, stage in cells:
        val = fmt(stage["best_val_miou"])
        if best_val is not None and score_or_nan(stage["best_val_miou"]) == best_val:
            val = f"**{val}**"
        wall = _duration(run["wall_s"])
        if (run.get("attempts") or 1) > 1:
            wall += f" ({run['attempts']} attempts)"
        rows.append([f"`{run['combination']}`"] + ([label] if several else [])
                    + [fmt(stage["miou"]), fmt(stage["mean_f1"]), val,
                       "–" if stage["best_val_epoch"] is None else str(stage["best_val_epoch"]), wall])
    grid = "; ".join(f"`{key}` ∈ {{{', '.join(values)}}}" for key, values in summary["grid"].items())
    sets = ", ".join(f"`{item}`" for item in summary["overrides"]) or "none"
    md = [f"# Sweep of {summary['config']}, task {summary['task']}", "", f"Grid: {grid}. Other overrides: {sets}.",
          "", md_table(header, rows), "",
          "Test scores are on the held-out test tiles; choose among the combinations by validation mIoU (in "
          "bold, the best), never by test. A combination's wall time covers its training and evaluation, summed "
          "over attempts when it was resumed. Each row's folder holds its full run (report.md, metrics.json).",
          "", "![validation mIoU per epoch](sweep.png)"]
    return "\n".join(md) + "\n"


def write_sweep_report(out_dir: str | Path, summary: dict) -> dict[str, Path]:
    """sweep.json (as given), sweep.md (the table) and sweep.png (every run's validation mIoU per
    epoch, its test mIoU in the legend) in `out_dir`."""
    out_dir = Path(out_dir)
    several = summary["task"] == "all"
    series = [(f"{run['combination']}{f' {label}' if several else ''} (test mIoU {fmt(stage['miou'])})",
               [(row["epoch"], row["val_miou"]) for row in stage["history"]])
              for run in summary["runs"] for label, stage in run["stages"].items()]
    return {"sweep.json": atomic_write_json(out_dir / "sweep.json", summary),
            "sweep.md": atomic_write_text(out_dir / "sweep.md", sweep_markdown(summary)),
            "sweep.png": plot_sweep_curves(out_dir / "sweep.png", series,
                                           f"sweep of {Path(summary['config']).name}: validation mIoU")}
