"""Confusion matrices and the scores derived from them.

Every score here is computed from ONE confusion matrix accumulated over the whole evaluation set
(never averaged per batch or per tile, as in the PASCAL VOC and ISPRS benchmark evaluations). Rows are ground truth, columns are prediction.

Conventions for classes that do not occur:
- a class with no ground-truth pixel and no predicted pixel has IoU, F1, precision and recall
  NaN; NaN classes are skipped in the means (and written as null in JSON by `core.report`);
- a class with no ground truth but some predicted pixels has IoU = F1 = 0 (every prediction of it
  is wrong) and counts in the means, as in the usual VOC/ISPRS evaluation code;
- precision is NaN when the class is never predicted, recall is NaN when it has no ground truth.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from wsseg.datasets.base import IGNORE_INDEX
from wsseg.datasets.xview2 import DAMAGE_CLASSES


def _bincount_pairs(pred, target, num_classes: int, ignore_index: int):
    """Body of `confusion_matrix`; numpy and torch share it because their indexing API agrees."""
    is_torch = isinstance(pred, torch.Tensor)
    if is_torch:
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    else:
        pred, target = np.asarray(pred).reshape(-1).astype(np.int64), np.asarray(target).reshape(-1).astype(np.int64)
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    # Out-of-range values mean a decoding bug upstream; dropping them silently would bias scores.
    bad_t = (target < 0) | (target >= num_classes)
    bad_p = (pred < 0) | (pred >= num_classes)
    if bool(bad_t.any()):
        raise ValueError(f"target holds values outside 0..{num_classes - 1} that are not ignore_index={ignore_index}: "
                         f"{sorted(set(target[bad_t].tolist()))[:10]}")
    if bool(bad_p.any()):
        raise ValueError(f"prediction holds values outside 0..{num_classes - 1}: "
                         f"{sorted(set(pred[bad_p].tolist()))[:10]}")
    flat = target * num_classes + pred
    if is_torch:
        counts = torch.bincount(flat, minlength=num_classes * num_classes)
        return counts.reshape(num_classes, num_classes).to(torch.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.int64)


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """C×C int64 counts, rows = ground truth, columns = prediction, ignored pixels left out.

    `pred` and `target` are class-index arrays of the same shape (any shape), both numpy arrays
    or both torch tensors. The result has the input's type (a torch result stays on the input's
    device, so validation inside a training loop needs no host copy per batch). Sum matrices
    over batches or tiles to accumulate.
    """
    if isinstance(pred, torch.Tensor) != isinstance(target, torch.Tensor):
        raise TypeError("pred and target must both be torch tensors or both numpy arrays")
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return _bincount_pairs(pred, target, num_classes, ignore_index)


def _as_numpy_cm(cm) -> np.ndarray:
    if isinstance(cm, torch.Tensor):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square C×C, got shape {cm.shape}")
    return cm.astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def segmentation_metrics(cm, class_names: Sequence[str], in_mean: Sequence[str] | None = None) -> dict:
    """Scores of one accumulated confusion matrix (see the module docstring for NaN rules).

    Returns `{"miou", "mean_f1", "overall_accuracy", "per_class": {name: {"iou", "f1",
    "precision", "recall", "support"}}, "classes_in_mean": [...]}`; fractions in 0..1, support in
    ground-truth pixels. mIoU and mean F1 average the classes in `in_mean` (all when None);
    overall accuracy counts every non-ignored pixel, including classes left out of the mean.
    """
    cm = _as_numpy_cm(cm)
    names = list(class_names)
    if len(names) != cm.shape[0]:
        raise ValueError(f"{len(names)} class names for a {cm.shape[0]}×{cm.shape[0]} confusion matrix")
    in_mean = names if in_mean is None else list(in_mean)
    unknown = set(in_mean) - set(names)
    if unknown:
        raise ValueError(f"in_mean names unknown classes {sorted(unknown)}")

    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pr = cm.sum(axis=0)
    iou = _ratio(tp, gt + pr - tp)
    f1 = _ratio(2 * tp, gt + pr)
    precision = _ratio(tp, pr)
    recall = _ratio(tp, gt)

    per_class = {
        name: {
            "iou": float(iou[i]),
            "f1": float(f1[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "support": int(gt[i]),
        }
        for i, name in enumerate(names)
    }
    mean_names = [n for n in names if n in in_mean]  # class order, whatever order in_mean had
    total = cm.sum()
    return {
        "miou": _nanmean(per_class[n]["iou"] for n in mean_names),
        "mean_f1": _nanmean(per_class[n]["f1"] for n in mean_names),
        "overall_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "per_class": per_class,
        "classes_in_mean": mean_names,
    }


def majority_baseline_miou(train_class_counts, eval_cm, class_names: Sequence[str],
                           in_mean: Sequence[str] | None = None) -> float:
    """mIoU of predicting the most frequent training class on every evaluated pixel.

    The floor any model must beat. Predicting class k everywhere moves each ground-truth row's
    total into column k, so only the row sums of `eval_cm` are needed; ties go to the lower index.
    """
    counts = train_class_counts
    counts = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts)
    cm = _as_numpy_cm(eval_cm)
    if counts.shape != (cm.shape[0],):
        raise ValueError(f"train_class_counts has shape {counts.shape}, expected ({cm.shape[0]},)")
    majority = int(np.argmax(counts))
    constant_cm = np.zeros_like(cm)
    constant_cm[:, majority] = cm.sum(axis=1)
    return segmentation_metrics(constant_cm, class_names, in_mean)["miou"]


def class_precision(cm) -> list[float | None]:
    """Precision per class (column-wise) of a confusion matrix; None for a class never predicted."""
    cm = _as_numpy_cm(cm)
    predicted = cm.sum(0)
    return [float(cm[c, c] / predicted[c]) if predicted[c] else None for c in range(len(cm))]


def unlearned_classes(cm, min_recall: float) -> np.ndarray:
    """C booleans: classes present in `cm`'s ground truth (rows) whose recall is below `min_recall`."""
    cm = _as_numpy_cm(cm)
    support = cm.sum(1)
    recall = _ratio(np.diag(cm), support)
    return (support > 0) & (np.nan_to_num(recall) < min_recall)


MIN_GAP = 0.005


def gap_closed(baseline: float, method: float, oracle: float, min_gap: float = MIN_GAP) -> float:
    """(method − baseline) / (oracle − baseline): the share of the oracle's gain the method reaches.

    NaN where the oracle beats the baseline by less than `min_gap` (half a point of IoU by
    default) or a score is undefined: there is no gap to speak of, and a ratio over a gap of
    0.002 would report a class as "2000 % closed"."""
    baseline, method, oracle = (float("nan") if v is None else float(v) for v in (baseline, method, oracle))
    gap = oracle - baseline
    return (method - baseline) / gap if gap >= min_gap else float("nan")


SCORE_BINS = 256


def score_histograms(probability, target, positive_class: int, ignore_index: int = IGNORE_INDEX,
                     bins: int = SCORE_BINS) -> np.ndarray:
    """2×`bins` counts of one class's predicted probability (H×W in [0, 1]), binned, for the pixels
    whose ground truth is another class (row 0) or that class (row 1); ignored pixels left out.
    Summed over images, they give every threshold's precision and recall at once."""
    probability, target = np.asarray(probability, dtype=np.float64), np.asarray(target)
    if probability.shape != target.shape:
        raise ValueError(f"probability shape {probability.shape} != target shape {target.shape}")
    keep = target != ignore_index
    bin_of = np.clip((probability[keep] * bins).astype(np.int64), 0, bins - 1)
    positive = target[keep] == positive_class
    return np.stack([np.bincount(bin_of[~positive], minlength=bins), np.bincount(bin_of[positive], minlength=bins)])


def max_f_measure(histograms: np.ndarray) -> dict:
    """The KITTI Road measures of one class from `score_histograms`: the maximum F-measure over
    thresholds, the precision, recall and threshold where it is reached, and the average precision
    (precision interpolated at recalls 0, 0.1, …, 1, as the KITTI devkit averages it). A pixel is
    predicted positive when its bin is at or above the threshold's."""
    negatives, positives = np.asarray(histograms, dtype=np.float64)
    bins = len(positives)
    true_pos = np.cumsum(positives[::-1])[::-1]  # positives in bins ≥ k
    false_pos = np.cumsum(negatives[::-1])[::-1]
    total_pos = positives.sum()
    if total_pos == 0:
        return {"max_f": None, "precision": None, "recall": None, "threshold": None, "average_precision": None}
    precision = _ratio(true_pos, true_pos + false_pos)
    recall = true_pos / total_pos
    f_measure = np.nan_to_num(_ratio(2 * precision * recall, precision + recall))
    best = int(np.argmax(f_measure))
    interpolated = [np.nanmax(np.where(recall >= r, precision, np.nan)) if (recall >= r).any() else 0.0
                    for r in np.linspace(0, 1, 11)]
    return {"max_f": float(f_measure[best]), "precision": float(precision[best]), "recall": float(recall[best]),
            "threshold": best / bins, "average_precision": float(np.mean(interpolated))}


XVIEW2_CLASSES = DAMAGE_CLASSES.names


def xview2_score(damage_cm) -> dict:
    """The xView2 challenge's score from one confusion matrix over `XVIEW2_CLASSES` (rows = ground truth):
    0.3 × localisation F1 (building = any grade) + 0.7 × the harmonic mean of the four grades'
    F1, each grade's F1 taken over the ground-truth building pixels, as the challenge's scorer
    does (a background pixel predicted damaged costs localisation, not damage)."""
    cm = np.asarray(damage_cm, dtype=np.float64)
    if cm.shape != (5, 5):
        raise ValueError(f"expected a 5×5 confusion matrix over {XVIEW2_CLASSES}, got {cm.shape}")
    tp_loc = cm[1:, 1:].sum()
    f1_loc = _f1(tp_loc, cm[0, 1:].sum(), cm[1:, 0].sum())
    grade_f1 = []
    for grade in range(1, 5):
        on_buildings = cm[1:, :]  # ground truth a building
        tp = on_buildings[grade - 1, grade]
        grade_f1.append(_f1(tp, on_buildings[:, grade].sum() - tp, on_buildings[grade - 1].sum() - tp))
    harmonic = 0.0 if min(grade_f1) == 0 else len(grade_f1) / sum(1 / f for f in grade_f1)
    return {"score": 0.3 * f1_loc + 0.7 * harmonic, "localisation_f1": f1_loc, "damage_f1": harmonic,
            "grade_f1": dict(zip(XVIEW2_CLASSES[1:], grade_f1))}


def _f1(tp: float, fp: float, fn: float) -> float:
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
