"""The figures of a report: per-class bars, confusion matrix, training curves, image triptychs.

matplotlib's Agg canvas is used directly (no pyplot), so drawing never touches the global
backend or needs a display, and leaves no open figures behind in long training runs.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from wsseg.core.io import score_or_nan
from wsseg.datasets.colour import encode_colour_mask

IGNORE_COLOUR = (0, 0, 0)
# Above this many classes (ADE20K's 150) a figure drops what would cover it: the numbers in each
# bar and confusion cell, the legend entries of classes absent from the panels. Its size is
# capped too: a 150-class confusion matrix at the few-class scale is an 18,000 px square that
# takes minutes to draw.
MANY_CLASSES = 25
MAX_SIDE_IN = 18.0
# The series of a grouped bar chart (task i, semi, task ii, oracle; full and eroded ground truth)
# each in a colour of its own, not the classes': the legend draws a series in its first bar's
# colour, which in the class palette is class 0's for every series (black for a dataset without
# a palette). Okabe and Ito's colours, which colour-blind readers tell apart.
SERIES_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")


def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, dpi: int = 110) -> Path:
    fig.savefig(path, dpi=dpi)
    return path


def _rgb01(colour) -> tuple[float, float, float]:
    return tuple(c / 255.0 for c in colour)


def _legend_handles(class_names, palette, shown: set[int] | None = None):
    """A patch per class (per class in `shown`, when given) and one for ignore."""
    handles = [Patch(facecolor=_rgb01(c), edgecolor="black", label=n)
               for k, (n, c) in enumerate(zip(class_names, palette)) if shown is None or k in shown]
    handles.append(Patch(facecolor=_rgb01(IGNORE_COLOUR), edgecolor="black", label="ignore"))
    return handles


def _tick_fontsize(count: int) -> float:
    return 10.0 if count <= MANY_CLASSES else max(3.0, 250.0 / count)


def plot_triptych(path: Path, panels: Sequence[tuple[str, np.ndarray | None]], class_names, palette,
                  title: str) -> Path:
    """Side-by-side panels: the first an RGB image, the rest class maps in palette colours. A
    panel whose data is None (a tagged image without a mask has no ground truth) is drawn as an
    empty frame of the image's size with its name in it, so that the figure still says what is missing."""
    h, w = panels[0][1].shape[:2]
    panel_w = 5.0
    fig = _figure(panel_w * len(panels), panel_w * h / w + 1.2)
    axes = fig.subplots(1, len(panels))
    for ax, (name, data) in zip(np.atleast_1d(axes), panels):
        ax.set_title(name)
        if data is None:
            ax.imshow(np.full((h, w, 3), 255, np.uint8))
            ax.text(w / 2, h / 2, name, ha="center", va="center", color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        shown = data if data.ndim == 3 else encode_colour_mask(data, palette, IGNORE_COLOUR)
        # nearest: class colours must stay pure when a large tile is shrunk for display
        ax.imshow(shown, interpolation="nearest" if data.ndim == 2 else "antialiased")
        ax.set_axis_off()
    fig.suptitle(title)
    shown = None
    if len(class_names) > MANY_CLASSES:
        shown = {int(k) for _, data in panels if data is not None and data.ndim == 2 for k in np.unique(data)
                 if k < len(class_names)}
    handles = _legend_handles(class_names, palette, shown)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), frameon=False,
               fontsize=8 if len(handles) > 14 else None)
    return _save(fig, path)


def plot_class_bars(path: Path, series: Sequence[tuple[str, Sequence[float]]], class_names, palette,
                    ylabel: str, title: str, mean_lines: Sequence[tuple[str, float]] = ()) -> Path:
    """`class_bars_figure`, saved to `path`."""
    return _save(class_bars_figure(series, class_names, palette, ylabel, title, mean_lines), path)


def class_bars_figure(series: Sequence[tuple[str, Sequence[float]]], class_names, palette, ylabel: str, title: str,
                      mean_lines: Sequence[tuple[str, float]] = ()) -> Figure:
    """Grouped bars per class: one series in the class colours; several each in its own colour
    (`SERIES_COLOURS`) and hatch, which the legend shows."""
    n = len(series)
    x = np.arange(len(class_names))
    width = 0.8 / n
    hatches = ["", "//", "..", "xx"]
    many = len(class_names) > MANY_CLASSES
    fig = _figure(min(MAX_SIDE_IN, max(6.0, 1.1 * len(class_names) * max(1, n * 0.7))), 4.2)
    ax = fig.subplots()
    for k, (label, values) in enumerate(series):
        values = np.array([score_or_nan(v) for v in values])
        colour = [_rgb01(c) for c in palette] if n == 1 else SERIES_COLOURS[k % len(SERIES_COLOURS)]
        bars = ax.bar(x + (k - (n - 1) / 2) * width, np.nan_to_num(values), width,
                      color=colour, edgecolor="black", linewidth=0.3 if many else None,
                      hatch=hatches[k % len(hatches)], label=label)
        if many:
            continue
        for bar, v in zip(bars, values):
            ax.annotate("–" if math.isnan(v) else f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    line_styles = ["--", ":", "-."]
    for k, (label, value) in enumerate(mean_lines):
        if not math.isnan(score_or_nan(value)):
            ax.axhline(score_or_nan(value), color="grey", linestyle=line_styles[k % 3], label=f"{label} {score_or_nan(value):.3f}")
    ax.set_xticks(x, class_names, rotation=90 if many else 20, ha="center" if many else "right",
                  fontsize=_tick_fontsize(len(class_names)))
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if n > 1 or mean_lines:
        ax.legend(fontsize=8, loc="upper right")
    return fig


def plot_confusion(path: Path, cm: np.ndarray, class_names, title: str) -> Path:
    """Row-normalised confusion matrix (each ground-truth class sums to 1), value in each cell."""
    cm = np.asarray(cm, np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)
    c = len(class_names)
    many = c > MANY_CLASSES
    fig = _figure(min(MAX_SIDE_IN, 1.1 * c + 2.5), min(MAX_SIDE_IN, 1.0 * c + 2.0))
    ax = fig.subplots()
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(0 if many else c):
        for j in range(c):
            if not math.isnan(norm[i, j]):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(c), class_names, rotation=90 if many else 30, ha="center" if many else "right",
                  fontsize=_tick_fontsize(c))
    ax.set_yticks(range(c), class_names, fontsize=_tick_fontsize(c))
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
                   if isinstance(row.get(key), numbers.Real) and not math.isnan(score_or_nan(row[key]))]
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


def plot_sweep_curves(path: Path, series: Sequence[tuple[str, Sequence[tuple[int, float]]]], title: str) -> Path:
    """Validation mIoU against epoch, one line per run of a sweep; `series` = (legend label, [(epoch, mIoU)])."""
    fig = _figure(7.5, 4.5)
    ax = fig.subplots()
    for label, points in series:
        points = [(e, score_or_nan(v)) for e, v in points if not math.isnan(score_or_nan(v))]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        else:  # no validation tiles: the run still belongs in the legend, with its test score
            ax.plot([], [], label=f"{label}, not validated")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mIoU")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)
