"""Class frequencies and the per-class loss weights measured from them.

Apart from the scores (`core.metrics`): these shape training, not its evaluation, and their floor
(`CLASS_WEIGHT_FLOOR`) is a training constant that a config's `class_weight_cap` is checked against.
"""

from __future__ import annotations

import numpy as np
import torch

from wsseg.datasets.base import IGNORE_INDEX


def class_pixel_counts(label, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """Pixels per class in a label map (numpy → int64 array, torch → int64 tensor), ignore skipped."""
    if isinstance(label, torch.Tensor):
        flat = label.reshape(-1).long()
        flat = flat[flat != ignore_index]
        bad = (flat < 0) | (flat >= num_classes)
        if bool(bad.any()):
            raise ValueError(f"label holds values outside 0..{num_classes - 1}: {sorted(set(flat[bad].tolist()))[:10]}")
        return torch.bincount(flat, minlength=num_classes).to(torch.int64)
    flat = np.asarray(label).reshape(-1).astype(np.int64)
    flat = flat[flat != ignore_index]
    bad = (flat < 0) | (flat >= num_classes)
    if bad.any():
        raise ValueError(f"label holds values outside 0..{num_classes - 1}: {sorted(set(flat[bad].tolist()))[:10]}")
    return np.bincount(flat, minlength=num_classes).astype(np.int64)


# The least measured class weight the segmenters train with: a dominant background weighs at
# least a tenth of a median-frequency class, never the ~0 at which it stops being predicted.
CLASS_WEIGHT_FLOOR = 0.1


def class_weights(counts, mode: str = "inverse", absent_weight: float = 0.0, floor: float | None = None,
                  cap: float | None = None) -> np.ndarray:
    """Per-class loss weights (float32 numpy) from pixel counts.

    - "inverse": w_c ∝ 1 / n_c, scaled so the present classes average 1 (the loss keeps its
      scale whatever the class count).
    - "median": median-frequency balancing (Eigen & Fergus 2015), w_c = median(f) / f_c with f
      the global pixel frequency of the present classes. The paper's f_c counts only images that
      contain c; with global counts a rare class gets a somewhat larger weight.

    Either way a class far more frequent than the rest gets a weight near 0: with a long tail of
    rare classes the median frequency (or the mean of 1 / f) is set by the tail, so a background
    of 77 % of the pixels among 59 classes gets about 0.003 and stops being learned. `floor` and
    `cap` (None: unbounded) bound the weights of the present classes from below and above.

    Classes with no pixel get `absent_weight` (default 0: they cannot occur in the targets the
    counts came from, and 1/0 would be infinite), unbounded.
    """
    counts = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"counts must be a 1-D array of non-negative pixel counts, got {counts!r}")
    present = counts > 0
    weights = np.full(counts.shape, float(absent_weight))
    if not present.any():
        return weights.astype(np.float32)
    freq = counts[present] / counts[present].sum()
    if mode == "inverse":
        inv = 1.0 / freq
        weights[present] = inv / inv.mean()
    elif mode == "median":
        weights[present] = np.median(freq) / freq
    else:
        raise ValueError(f"unknown class weight mode {mode!r}; use 'inverse' or 'median'")
    if floor is not None:
        weights[present] = np.maximum(weights[present], floor)
    if cap is not None:
        weights[present] = np.minimum(weights[present], cap)
    return weights.astype(np.float32)
