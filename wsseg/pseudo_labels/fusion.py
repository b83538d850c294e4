"""Combining class probabilities of two models under the veto of a crop's tags.

Pure array functions over C×H×W probabilities in dataset class order: nothing here reads files
or runs a network.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class HasBackgroundChannel(Protocol):
    """What the tag veto needs of a class layout (`models.single_stage.ClassLayout`)."""

    background_index: int | None


def allowed_classes(tags: torch.Tensor, layout: HasBackgroundChannel) -> torch.Tensor:
    """The crop's tags in dataset order, plus the constant-logit class, which is never tagged away."""
    allowed = tags.clone()
    if layout.background_index is not None:
        allowed[layout.background_index] = 1.0
    return allowed


def fuse_with_segmenter(weak_probs: np.ndarray, segmenter_probs: np.ndarray, allowed: np.ndarray,
                        weight: float, floor: float = 1e-6, abstain: np.ndarray | None = None) -> np.ndarray:
    """Product of experts p ∝ p_weak^(1−w) · p_segmenter^w over the allowed classes (C×H×W each).

    The two models fail differently: the weak one saw every tagged crop but never a pixel label,
    the segmenter saw pixel labels of a few tiles only. A class survives where both find it
    plausible, and the tags veto the segmenter's guesses of absent classes. `floor` keeps a zero
    in one model from silencing the other completely.

    `abstain` (C booleans): classes the weak model has not learned (it never predicts them where
    they are). A geometric mean cannot recover a class one expert puts near zero, so for these
    the weak expert abstains: it takes the segmenter's probability as its own (renormalised),
    and the segmenter alone decides them.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weak.pseudo.segmenter_weight must be in [0, 1], got {weight}")
    if weak_probs.shape != segmenter_probs.shape:
        raise ValueError(f"weak probabilities {weak_probs.shape} and segmenter probabilities "
                         f"{segmenter_probs.shape} differ in shape")
    if abstain is not None and np.any(abstain):
        abstain = np.asarray(abstain, bool).reshape(-1, 1, 1)
        weak_probs = _normalised(np.where(abstain, segmenter_probs, weak_probs))
    fused = (np.maximum(weak_probs, floor) ** (1.0 - weight)) * (np.maximum(segmenter_probs, floor) ** weight)
    fused = fused * np.asarray(allowed, dtype=fused.dtype).reshape(-1, 1, 1)
    return _normalised(fused).astype(np.float32)


def _normalised(probs: np.ndarray) -> np.ndarray:
    return probs / np.maximum(probs.sum(0, keepdims=True), 1e-12)
