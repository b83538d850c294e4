import math

import pytest
import torch

from wsseg.datasets.tags import TAG_NEGATIVE, TAG_POSITIVE, TAG_UNKNOWN
from wsseg.models.tag_loss import partial_tag_loss, pooled_class_scores


def _by_hand(pixel_logits):
    """nGWP + focal mask penalty of one crop, pixel by pixel in plain Python."""
    masks = []
    for logits in pixel_logits:
        exps = [math.exp(v) for v in logits]
        masks.append([e / sum(exps) for e in exps])
    scores = []
    for k in range(len(pixel_logits[0])):
        m = [mask[k] for mask in masks]
        y = [logits[k] for logits in pixel_logits]
        mean = sum(m) / len(m)
        scores.append(sum(mi * yi for mi, yi in zip(m, y)) / (1 + sum(m)) + (1 - mean) ** 3 * math.log(0.01 + mean))
    return scores


def test_pooled_scores_are_ngwp_with_the_focal_penalty():
    # One 2×2 crop, 3 classes: class 0 fills the left column, class 1 the right, class 2 nowhere.
    pixel_logits = [[4.0, 0.0, -2.0], [4.0, 1.0, -2.0], [0.0, 5.0, -3.0], [-1.0, 3.0, -2.0]]  # row-major pixels
    logits = torch.tensor(pixel_logits).T.reshape(1, 3, 2, 2)
    scores = pooled_class_scores(logits)
    assert scores.shape == (1, 3) and scores.dtype == torch.float32
    assert scores[0].tolist() == pytest.approx(_by_hand(pixel_logits), abs=1e-5)
    assert scores[0, 2] < -3  # an empty mask: strongly negative, whatever its logits
    assert pooled_class_scores(logits.half()).dtype == torch.float32


def test_partial_tag_loss_learns_only_from_the_known_classes():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 5, requires_grad=True)
    targets = torch.tensor([[TAG_POSITIVE, TAG_NEGATIVE, TAG_UNKNOWN, TAG_NEGATIVE],
                            [TAG_UNKNOWN] * 4,
                            [TAG_UNKNOWN, TAG_POSITIVE, TAG_UNKNOWN, TAG_UNKNOWN]], dtype=torch.int8)
    loss = partial_tag_loss(logits, targets)
    scores = pooled_class_scores(logits.detach())
    known = [(0, 0, 1.0), (0, 1, 0.0), (0, 3, 0.0), (2, 1, 1.0)]
    expected = sum(math.log1p(math.exp(-scores[n, k])) if t else math.log1p(math.exp(scores[n, k]))
                   for n, k, t in known) / len(known)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert logits.grad[1].abs().max() == 0  # a crop of unknown classes only: no gradient
    assert logits.grad[0].abs().max() > 0 and logits.grad[2].abs().max() > 0
    # A batch of pixel-labelled crops (all unknown): no loss at all.
    assert partial_tag_loss(logits, torch.full((3, 4), TAG_UNKNOWN, dtype=torch.int8)).item() == 0.0
    with pytest.raises(ValueError, match="N×K"):
        partial_tag_loss(logits, targets[:, :3])
