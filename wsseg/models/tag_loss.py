"""A classification loss on any segmenter's logits from partly known crop tags (task ii, online).

The segmenter's logits are pooled into one score per class exactly as the single-stage model
pools its own (Araslanov & Roth, CVPR 2020): normalised global weighted pooling with the softmax
masks as weights, plus the focal mask penalty. The penalty depends on the masks alone, and a
segmenter, unlike the single-stage model, has no constant-logit channel to anchor its logits:
without it, lowering every logit of a pixel together (which leaves the softmax unchanged) would
lower an absent class's score as well as emptying its mask would.

It lives in `models`, beside the single-stage model whose pooling it reuses (one definition of
nGWP for both); `pseudo_labels` sits below `models` and could not import it, and `core` knows
no model. Targets are `datasets.tags` codes per class: positive, negative, or unknown (no loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsseg.datasets.tags import TAG_NEGATIVE, TAG_POSITIVE
from wsseg.models.single_stage import focal_mask_penalty, normalised_gwp


def pooled_class_scores(logits: torch.Tensor) -> torch.Tensor:
    """N×K×H×W logits → N×K scores: nGWP with the softmax masks, plus the focal mask penalty (fp32)."""
    logits = logits.float()
    masks = F.softmax(logits, dim=1)
    return normalised_gwp(logits, masks) + focal_mask_penalty(masks)


def partial_tag_loss(logits: torch.Tensor, tag_targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the pooled scores, averaged over the known (crop, class) entries.

    `tag_targets`: N×K of TAG_POSITIVE / TAG_NEGATIVE / TAG_UNKNOWN. Where every entry is
    unknown (a batch of pixel-labelled crops) the loss is 0 and gives no gradient. Per entry this
    is the single-stage model's multi-label soft margin loss, which averages over all classes.
    """
    if tag_targets.shape != logits.shape[:2]:
        raise ValueError(f"tag_targets must be N×K = {tuple(logits.shape[:2])}, got {tuple(tag_targets.shape)}")
    known = (tag_targets == TAG_POSITIVE) | (tag_targets == TAG_NEGATIVE)
    if not known.any():
        return logits.new_zeros((), dtype=torch.float32)
    scores = pooled_class_scores(logits)
    per_entry = F.binary_cross_entropy_with_logits(scores, (tag_targets == TAG_POSITIVE).float(), reduction="none")
    return per_entry[known].mean()
