"""Run reports: metrics JSON, a markdown summary and the figures a reader checks first.

Figures use matplotlib's Agg canvas directly (no pyplot), so writing a report never touches the
global backend or needs a display, and leaves no open figures behind in long training runs.

JSON is written atomically (temp file + os.replace): a crash or a reader polling the run folder
never sees half a file. NaN scores (classes absent from the evaluated pixels, see
`core.metrics`) become null, since JSON has no NaN.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from wsseg.core.io import atomic_write_json as write_json_atomic
from wsseg.core.io import atomic_write_text as write_text_atomic
from wsseg.core.io import to_jsonable  # noqa: F401 (re-exported)

IGNORE_INDEX = 255
IGNORE_COLOUR = (0, 0, 0)
# Where write_report looks for `metrics.majority_baseline_miou(...)`; both spellings are in use.
BASELINE_KEYS = ("majority_baseline_miou", "baseline_majority_miou")


# ---------------------------------------------------------------- files

def _safe_name(tile_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(tile_id))


# ---------------------------------------------------------------- formatting

def _num(value) -> float:
    """Score as float with None (JSON null) read back as NaN."""
    return float("nan") if value is None else float(value)


def _fmt(value, digits: int = 3) -> str:
    value = _num(value)
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def _fmt_signed(value, digits: int = 3) -> str:
    value = _num(value)
    return "–" if math.isnan(value) else f"{value:+.{digits}f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- images

def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """uint8 H×W class map → uint8 H×W×3 palette colours, ignore pixels black."""
    mask = np.asarray(mask)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    lut[ignore_index] = IGNORE_COLOUR
    unknown = np.setdiff1d(np.unique(mask), list(range(len(palette))) + [ignore_index])
    if unknown.size:
        raise ValueError(f"mask holds class indices {unknown.tolist()[:10]} beyond the {len(palette)}-colour palette")
    return lut[mask.astype(np.uint8)]


def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, dpi: int = 110) -> Path:
    fig.savefig(path, dpi=dpi)
    return path


def _rgb01(colour) -> tuple[float, float, float]:
    return tuple(c / 255.0 for c in colour)


def _legend_handles(class_names, palette):
    handles = [Patch(facecolor=_rgb01(c), edgecolor="black", label=n) for n, c in zip(class_names, palette)]
    handles.append(Patch(facecolor=_rgb01(IGNORE_COLOUR), edgecolor="black", label="ignore"))
    return handles


def plot_triptych(path: Path, panels: Sequence[tuple[str, np.ndarray]], class_names, palette, title: str) -> Path:
    """Side-by-side panels: the first an RGB image, the rest class maps in palette colours."""
    h, w = panels[0][1].shape[:2]
    panel_w = 5.0
    fig = _figure(panel_w * len(panels), panel_w * h / w + 1.2)
    axes = fig.subplots(1, len(panels))
    for ax, (name, data) in zip(np.atleast_1d(axes), panels):
        shown = data if data.ndim == 3 else colorize(data, palette)
        # nearest: class colours must stay pure when a large tile is shrunk for display
        ax.imshow(shown, interpolation="nearest" if data.ndim == 2 else "antialiased")
        ax.set_title(name)
        ax.set_axis_off()
    fig.suptitle(title)
    fig.legend(handles=_legend_handles(class_names, palette), loc="outside lower center",
               ncol=min(len(class_names) + 1, 7), frameon=False)
    return _save(fig, path)


def plot_class_bars(path: Path, series: Sequence[tuple[str, Sequence[float]]], class_names, palette,
                    ylabel: str, title: str, mean_lines: Sequence[tuple[str, float]] = ()) -> Path:
    """Grouped bars per class: each series one bar per class, palette colour, told apart by hatch."""
    n = len(series)
    x = np.arange(len(class_names))
    width = 0.8 / n
    hatches = ["", "//", "..", "xx"]
    fig = _figure(max(6.0, 1.1 * len(class_names) * max(1, n * 0.7)), 4.2)
    ax = fig.subplots()
    for k, (label, values) in enumerate(series):
        values = np.array([_num(v) for v in values])
        bars = ax.bar(x + (k - (n - 1) / 2) * width, np.nan_to_num(values), width,
                      color=[_rgb01(c) for c in palette], edgecolor="black", hatch=hatches[k % len(hatches)],
                      label=label)
        for bar, v in zip(bars, values):
            ax.annotate("–" if math.isnan(v) else f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    line_styles = ["--", ":", "-."]
    for k, (label, value) in enumerate(mean_lines):
        if not math.isnan(_num(value)):
            ax.axhline(_num(value), color="grey", linestyle=line_styles[k % 3], label=f"{label} {_num(value):.3f}")
    ax.set_xticks(x, class_names, rotation=20, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if n > 1 or mean_lines:
        ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def plot_confusion(path: Path, cm: np.ndarray, class_names, title: str) -> Path:
    """Row-normalised confusion matrix (each ground-truth class sums to 1), value in each cell."""
    cm = np.asarray(cm, np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)
    c = len(class_names)
    fig = _figure(1.1 * c + 2.5, 1.0 * c + 2.0)
    ax = fig.subplots()
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(c):
        for j in range(c):
            if not math.isnan(norm[i, j]):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(c), class_names, rotation=30, ha="right")
    ax.set_yticks(range(c), class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_curves(path: Path, history: Sequence[dict]) -> Path:
    """Losses, validation scores and learning rate against epoch (missing values skipped)."""
    keys = sorted({k for row in history for k in row} - {"epoch"})
    loss_keys = ["train_loss"] + [k for k in keys if "loss" in k and k != "train_loss"]
    score_keys = ["val_miou"] + [k for k in keys if any(s in k for s in ("miou", "f1", "acc")) and k != "val_miou"]
    panels = [("loss", loss_keys, False), ("score", score_keys, False)]
    if "lr" in keys:
        panels.append(("learning rate", ["lr"], True))
    fig = _figure(4.5 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels))
    for ax, (ylabel, panel_keys, log) in zip(np.atleast_1d(axes), panels):
        for key in panel_keys:
            pts = [(row.get("epoch", i), row[key]) for i, row in enumerate(history)
                   if isinstance(row.get(key), numbers.Real) and not math.isnan(_num(row[key]))]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=key)
        # A loss of exactly 0 (e.g. a self-supervised term not yet active) cannot be log-scaled.
        if log and ax.lines and all(min(line.get_ydata()) > 0 for line in ax.lines):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------- single run

def _class_rows(metrics: dict, class_names) -> list[list[str]]:
    eroded = metrics.get("eroded")
    in_mean = set(metrics.get("classes_in_mean", class_names))
    rows = []
    for name in class_names:
        pc = metrics["per_class"][name]
        row = [name, "yes" if name in in_mean else "no", _fmt(pc["iou"]), _fmt(pc["f1"]),
               _fmt(pc["precision"]), _fmt(pc["recall"]), str(pc["support"])]
        if eroded:
            row += [_fmt(eroded["per_class"][name]["iou"]), _fmt(eroded["per_class"][name]["f1"])]
        rows.append(row)
    mean_row = [f"**mean ({len(in_mean)} classes)**", "", _fmt(metrics["miou"]), _fmt(metrics["mean_f1"]), "", "", ""]
    if eroded:
        mean_row += [_fmt(eroded["miou"]), _fmt(eroded["mean_f1"])]
    rows.append(mean_row)
    return rows


def _summary_line(metrics: dict, label: str = "") -> str:
    parts = [f"mIoU **{_fmt(metrics['miou'])}**", f"mean F1 {_fmt(metrics['mean_f1'])}",
             f"OA {_fmt(metrics['overall_accuracy'])}"]
    for key in BASELINE_KEYS:
        if key in metrics:
            parts.append(f"majority baseline mIoU {_fmt(metrics[key])}")
            break
    return (f"{label}: " if label else "") + " · ".join(parts)


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
    written = {"metrics.json": write_json_atomic(run_dir / "metrics.json", metrics)}

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
        name = f"triptych_{_safe_name(tile_id)}.png"
        written[name] = plot_triptych(run_dir / name, [("image", image), ("ground truth", gt), ("prediction", pred)],
                                      class_names, palette, f"{title}: {tile_id}")
        triptychs.append((tile_id, name))

    header = ["class", "in mean", "IoU", "F1", "precision", "recall", "support (px)"]
    if metrics.get("eroded"):
        header += ["IoU eroded", "F1 eroded"]
    md = [f"# {title}", "", _summary_line(metrics, "full ground truth")]
    if metrics.get("eroded"):
        md += ["", _summary_line(metrics["eroded"], "eroded ground truth")]
    md += ["", "## Per class", "", _md_table(header, _class_rows(metrics, class_names)), "",
           "Scores are fractions (0–1) from one confusion matrix over all evaluated pixels; "
           "overall accuracy includes classes outside the mean; – marks a class absent from "
           "both ground truth and prediction.", "", "## Figures", "", "![per-class IoU](iou_bars.png)"]
    if "confusion.png" in written:
        md.append("![confusion matrix](confusion.png)")
    if "curves.png" in written:
        md.append("![training curves](curves.png)")
    for tile_id, name in triptychs:
        md.append(f"- [{tile_id}: image | ground truth | prediction]({name})")
    written["report.md"] = write_text_atomic(run_dir / "report.md", "\n".join(md) + "\n")
    return written


# ---------------------------------------------------------------- task i vs task ii

def _pseudo_tables(pseudo_quality: dict, class_names) -> list[str]:
    """Top-level scalars, then a per-class table whose columns are whatever keys the entries have."""
    scalars = [(k, v) for k, v in pseudo_quality.items() if k != "per_class" and not isinstance(v, dict)]
    def cell(v):
        if isinstance(v, list):  # e.g. the calibration tiles and the dropped classes
            return ", ".join(map(str, v)) or "none"
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return str(v)  # counts (tiles, pixels) are not fractions
        return _fmt(v) if v is None or isinstance(v, (float, np.floating)) else str(v)
    md = [_md_table(["measure", "value"], [[k, cell(v)] for k, v in scalars])]
    per_class = pseudo_quality.get("per_class") or {}
    if per_class:
        columns: list[str] = []
        for name in class_names:
            for key in per_class.get(name, {}):
                if key not in columns:
                    columns.append(key)
        rows = [[name] + [_fmt(per_class.get(name, {}).get(c)) for c in columns] for name in class_names]
        md += ["", _md_table(["class"] + columns, rows)]
    return md


def _iou_diff_table(task_i: dict, task_ii: dict, class_names) -> str:
    in_mean = set(task_i.get("classes_in_mean", class_names))
    rows = []
    for name in class_names:
        a, b = _num(task_i["per_class"][name]["iou"]), _num(task_ii["per_class"][name]["iou"])
        rows.append([name if name in in_mean else f"{name} (not in mean)", _fmt(a), _fmt(b), _fmt_signed(b - a)])
    for key, label in (("miou", "**mIoU**"), ("mean_f1", "mean F1"), ("overall_accuracy", "OA")):
        a, b = _num(task_i[key]), _num(task_ii[key])
        rows.append([label, _fmt(a), _fmt(b), _fmt_signed(b - a)])
    return _md_table(["class", "task i", "task ii", "difference (ii − i)"], rows)


def write_comparison_report(
    run_dir: str | Path,
    task_i: dict,
    task_ii: dict,
    pseudo_quality: dict | None,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    samples: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
) -> dict:
    """Compare task i (pixel labels only) with task ii (plus tags): comparison.json/.md and figures.

    `task_i`, `task_ii` follow the `segmentation_metrics` schema ("eroded" optional).
    `pseudo_quality` (or None) has scalars such as coverage, miou_raw, miou_crf, miou_final and a
    "per_class" dict of per-class numbers; every key found is tabulated. `samples` are
    (tile_id, image uint8 H×W×3, pseudo mask uint8 H×W, ground truth uint8 H×W).
    Returns the comparison dict written to comparison.json, the unit `aggregate_seeds` takes.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    class_names = list(class_names)
    comparison = {"task_i": task_i, "task_ii": task_ii, "pseudo_masks": pseudo_quality}
    write_json_atomic(run_dir / "comparison.json", comparison)

    plot_class_bars(
        run_dir / "comparison_iou.png",
        [("task i", [task_i["per_class"][n]["iou"] for n in class_names]),
         ("task ii", [task_ii["per_class"][n]["iou"] for n in class_names])],
        class_names, palette, "IoU", "per-class IoU: task i vs task ii",
        [("mIoU task i", task_i["miou"]), ("mIoU task ii", task_ii["miou"])])

    md = ["# Task i vs task ii", "", f"- task i: {_summary_line(task_i)}", f"- task ii: {_summary_line(task_ii)}",
          "", "## Per-class IoU (full ground truth)", "", _iou_diff_table(task_i, task_ii, class_names)]
    if task_i.get("eroded") and task_ii.get("eroded"):
        md += ["", "## Per-class IoU (eroded ground truth)", "",
               _iou_diff_table(task_i["eroded"], task_ii["eroded"], class_names)]
    md += ["", "![IoU task i vs task ii](comparison_iou.png)"]
    if pseudo_quality is not None:
        md += ["", "## Pseudo-mask quality", ""]
        md += _pseudo_tables(pseudo_quality, class_names)
    if samples:
        md += ["", "## Pseudo-mask samples", ""]
    for tile_id, image, pseudo, gt in samples:
        name = f"pseudo_{_safe_name(tile_id)}.png"
        plot_triptych(run_dir / name, [("image", image), ("pseudo mask", pseudo), ("ground truth", gt)],
                      class_names, palette, f"pseudo mask: {tile_id}")
        md.append(f"- [{tile_id}: image | pseudo mask | ground truth]({name})")
    write_text_atomic(run_dir / "comparison.md", "\n".join(md) + "\n")
    return comparison


# ---------------------------------------------------------------- several split seeds

def _mean_std(values) -> dict:
    """Mean and sample standard deviation (ddof=1) over the finite values; std is NaN below two."""
    finite = [v for v in (_num(x) for x in values) if not math.isnan(v)]
    n = len(finite)
    mean = float(np.mean(finite)) if n else float("nan")
    std = float(np.std(finite, ddof=1)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "n": n}


def _aggregate_pairs(pairs: Sequence[tuple[dict, dict]], class_names) -> dict:
    """Per seed the difference is taken first (paired), then averaged: its std is the seed-to-seed
    spread of the gain, which is what says whether task ii reliably beats task i."""
    out = {"per_class": {}}
    for name in class_names:
        a = [_num(i["per_class"][name]["iou"]) for i, _ in pairs]
        b = [_num(ii["per_class"][name]["iou"]) for _, ii in pairs]
        out["per_class"][name] = {"task_i": _mean_std(a), "task_ii": _mean_std(b),
                                  "difference": _mean_std([y - x for x, y in zip(a, b)])}
    for key in ("miou", "mean_f1", "overall_accuracy"):
        a = [_num(i[key]) for i, _ in pairs]
        b = [_num(ii[key]) for _, ii in pairs]
        out[key] = {"task_i": _mean_std(a), "task_ii": _mean_std(b),
                    "difference": _mean_std([y - x for x, y in zip(a, b)])}
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
    return result


def _pm(stat: dict, signed: bool = False) -> str:
    mean = _fmt_signed(stat["mean"]) if signed else _fmt(stat["mean"])
    std = _num(stat["std"])
    return mean if math.isnan(std) else f"{mean} ± {std:.3f}"


def aggregate_markdown(aggregate: dict, title: str = "Task i vs task ii over split seeds") -> str:
    """Markdown tables (mean ± std over seeds) of an `aggregate_seeds` result."""
    def table(block: dict) -> str:
        rows = [[name, _pm(s["task_i"]), _pm(s["task_ii"]), _pm(s["difference"], signed=True)]
                for name, s in block["per_class"].items()]
        for key, label in (("miou", "**mIoU**"), ("mean_f1", "mean F1"), ("overall_accuracy", "OA")):
            s = block[key]
            rows.append([label, _pm(s["task_i"]), _pm(s["task_ii"]), _pm(s["difference"], signed=True)])
        return _md_table(["class (IoU)", "task i", "task ii", "difference (ii − i)"], rows)

    md = [f"# {title}", "", f"{aggregate['num_seeds']} seeds; mean ± sample std (ddof 1); "
          f"mean over {', '.join(aggregate['classes_in_mean'])}.", "", "## Full ground truth", "", table(aggregate)]
    if "eroded" in aggregate:
        md += ["", "## Eroded ground truth", "", table(aggregate["eroded"])]
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
    return {"seed_summary.json": write_json_atomic(run_dir / "seed_summary.json", summary),
            "seed_summary.md": write_text_atomic(run_dir / "seed_summary.md", aggregate_markdown(summary, title))}
