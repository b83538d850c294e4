import pytest
import torch
import torch.nn.functional as F

from wsseg.datasets.tags import TAG_NEGATIVE, TAG_POSITIVE, TAG_UNKNOWN
from wsseg.pseudo_labels.consistency import consistency_loss, consistency_targets, tag_restricted_probabilities

IGN = 255


def _logits():
    """Two crops of 1×3 pixels and 3 classes, from their probabilities (class, then pixel)."""
    per_pixel = torch.tensor([[[0.50, 0.45, 0.05], [0.04, 0.86, 0.10], [0.05, 0.05, 0.90]],
                              [[0.30, 0.30, 0.40], [0.05, 0.93, 0.02], [0.96, 0.02, 0.02]]])  # N×W×K
    return per_pixel.permute(0, 2, 1).log()[:, :, None, :]  # N×K×1×W


def test_absent_classes_are_zeroed_and_the_rest_renormalised():
    logits = _logits()
    tags = torch.tensor([[TAG_UNKNOWN, TAG_POSITIVE, TAG_NEGATIVE], [TAG_UNKNOWN] * 3], dtype=torch.int8)
    probs = tag_restricted_probabilities(logits, tags)
    p = logits.exp()
    expected_first = p[0, :2] / p[0, :2].sum(0, keepdim=True)
    assert torch.allclose(probs[0, :2], expected_first, atol=1e-6)
    assert (probs[0, 2] == 0).all()
    assert torch.allclose(probs[1], p[1], atol=1e-6)  # nothing ruled out: the softmax itself
    assert torch.allclose(probs.sum(1), torch.ones(2, 1, 3), atol=1e-6)


def test_targets_are_the_confident_tag_restricted_argmax():
    logits = _logits()
    tags = torch.tensor([[TAG_UNKNOWN, TAG_POSITIVE, TAG_NEGATIVE], [TAG_UNKNOWN] * 3], dtype=torch.int8)
    targets = consistency_targets(logits, tags, threshold=0.9)
    # Crop 0 without class 2: pixel 0 0.50 / 0.95 → unconfident; pixel 1 0.86 / 0.90 = 0.96 → class 1;
    # pixel 2 was 0.90 class 2: 0.05 / 0.10 each → 0.5, unconfident. Crop 1 is the plain softmax.
    assert targets.tolist() == [[[IGN, 1, IGN]], [[IGN, 1, 0]]]
    assert consistency_targets(logits, tags, threshold=0.52)[0].tolist() == [[0, 1, IGN]]
    assert consistency_targets(logits, tags, threshold=0.5)[0].tolist() == [[0, 1, 0]]  # a 0.5 tie goes to class 0
    # One class left: certain everywhere, even at threshold 1.
    only_one = torch.tensor([[TAG_NEGATIVE, TAG_UNKNOWN, TAG_NEGATIVE]] * 2, dtype=torch.int8)
    assert (consistency_targets(logits, only_one, threshold=1.0) == 1).all()
    # Every class ruled out: no target at all.
    none = torch.full((2, 3), TAG_NEGATIVE, dtype=torch.int8)
    assert (consistency_targets(logits, none, threshold=0.1) == IGN).all()


def test_consistency_loss_averages_over_all_pixels():
    torch.manual_seed(0)
    strong = torch.randn(2, 3, 2, 2, requires_grad=True)
    targets = torch.full((2, 2, 2), IGN)
    targets[0, 0, 0], targets[1, 1, 1] = 2, 0
    loss = consistency_loss(strong, targets)
    per_pixel = F.cross_entropy(strong.detach(), targets, reduction="none", ignore_index=IGN)
    assert loss.item() == pytest.approx(per_pixel.sum().item() / 8)
    loss.backward()
    assert strong.grad[0, :, 1].abs().max() == 0  # unconfident pixels give no gradient
    assert consistency_loss(strong, torch.full((2, 2, 2), IGN)).item() == 0.0

