"""Weak-to-strong consistency under the crop tags (FixMatch, Sohn et al. 2020; UniMatch, Yang et al. 2023).

The segmenter's own prediction on the weakly augmented view of a tagged crop, restricted to the
classes its tags do not rule out, becomes the pixel target of a strongly (photometrically)
augmented view of the same crop wherever it is confident enough. The tags act as a hard
constraint: a class absent from every overlapping grid cell cannot be a target.
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


def consistency_targets(weak_logits: torch.Tensor, tag_targets: torch.Tensor, threshold: float,
                        ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """N×H×W targets: the argmax of the tag-restricted weak prediction where its probability is at
    least `threshold`, `ignore_index` elsewhere. No gradient flows into the weak prediction."""
    probs = tag_restricted_probabilities(weak_logits, tag_targets)
    confidence, labels = probs.max(dim=1)
    return labels.masked_fill(confidence < threshold, ignore_index)


def consistency_loss(strong_logits: torch.Tensor, targets: torch.Tensor,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy of the strong view on the confident pixels, averaged over all pixels as in
    FixMatch and UniMatch: unconfident ones count 0, so the term grows with the confident share."""
    per_pixel = F.cross_entropy(strong_logits.float(), targets, reduction="none", ignore_index=ignore_index)
    return per_pixel.sum() / max(targets.numel(), 1)
