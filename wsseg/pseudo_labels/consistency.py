"""Weak-to-strong consistency (FixMatch, Sohn et al. 2020; UniMatch, Yang et al. 2023).

A prediction on the weakly augmented view of a crop becomes the pixel target of a strongly
(photometrically) augmented view of the same crop wherever it is confident enough. Under crop
tags (task ii) the prediction is first restricted to the classes the tags do not rule out: a
class absent from every overlapping grid cell cannot be a target. Without tags (the
semi-supervised arm) every class is allowed, and CutMix pastes a box of the next crop of the
batch into each strong view, its targets with it (`paste_boxes`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsseg.datasets.base import IGNORE_INDEX
from wsseg.datasets.tags import TAG_NEGATIVE


def tag_restricted_probabilities(weak_logits: torch.Tensor, tag_targets: torch.Tensor) -> torch.Tensor:
    """Softmax of N×K×H×W logits with the tags' absent classes at probability 0, the rest renormalised.

    The softmax over the allowed classes only: the same as zeroing and renormalising, without
    dividing by a sum that underflows. A crop whose tags rule out every class gets all zeros.
    """
    allowed = (tag_targets != TAG_NEGATIVE)[:, :, None, None]
    masked = weak_logits.detach().float().masked_fill(~allowed, float("-inf"))
    probs = F.softmax(masked, dim=1)
    return torch.nan_to_num(probs, nan=0.0)


def consistency_targets(weak_logits: torch.Tensor, tag_targets: torch.Tensor | None, threshold: float,
                        ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """N×H×W targets: the argmax of the (tag-restricted, unless `tag_targets` is None) weak
    prediction where its probability is at least `threshold`, `ignore_index` elsewhere. No
    gradient flows into the weak prediction."""
    if tag_targets is None:
        probs = F.softmax(weak_logits.detach().float(), dim=1)
    else:
        probs = tag_restricted_probabilities(weak_logits, tag_targets)
    confidence, labels = probs.max(dim=1)
    return labels.masked_fill(confidence < threshold, ignore_index)


def consistency_loss(strong_logits: torch.Tensor, targets: torch.Tensor,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy of the strong view on the confident pixels, averaged over all pixels as in
    FixMatch and UniMatch: unconfident ones count 0, so the term grows with the confident share."""
    per_pixel = F.cross_entropy(strong_logits.float(), targets, reduction="none", ignore_index=ignore_index)
    return per_pixel.sum() / max(targets.numel(), 1)


def paste_boxes(batch: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """CutMix within a batch: row i of `batch` (N×…×H×W) with its box `boxes[i]` (top, left, h, w;
    h ≤ 0 for none) taken from row (i + 1) mod N. Applied to the strong views and to their
    targets with the same boxes, it moves the targets with the pixels."""
    mixed = batch.clone()
    partner = torch.roll(batch, shifts=-1, dims=0)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        if h > 0 and w > 0:
            mixed[i, ..., top:top + h, left:left + w] = partner[i, ..., top:top + h, left:left + w]
    return mixed
