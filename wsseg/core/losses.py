"""The segmentation loss of every stage that trains on pixel labels (real or pseudo)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsseg.datasets.base import IGNORE_INDEX


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
                           pixel_weights: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross entropy averaged over labelled pixels, each weighted by its class and its own weight.

    `pixel_weights` (N×H×W) lets pseudo-labelled pixels count less than real labels. The mean is
    normalised by the total weight, as `F.cross_entropy(weight=...)` does.
    """
    per_pixel = F.cross_entropy(logits.float(), target, reduction="none", ignore_index=ignore_index)
    valid = target != ignore_index
    weight = valid.float()
    if class_weights is not None:
        weight = weight * class_weights.to(logits.device)[target.clamp(max=len(class_weights) - 1)]
    if pixel_weights is not None:
        weight = weight * pixel_weights
    return (per_pixel * weight).sum() / weight.sum().clamp(min=1e-8)
