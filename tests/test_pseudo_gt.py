import math

import pytest
import torch
import torch.nn.functional as F

from wsseg.pseudo_labels.pseudo_gt import counting_images, pseudo_labels_from_masks, self_supervised_loss

IGN = 255


def _masks(*images):
    """Per image, a list of channel rows (background first) → N×(C+1)×1×W."""
    return torch.tensor(images, dtype=torch.float32).unsqueeze(2)


def test_thresholds_absent_classes_and_ambiguity():
    masks = _masks(
        # bg max 0.9 → 0.63; class 1 max 0.8 → 0.48; class 2 untagged, so zeroed.
        [[0.9, 0.1, 0.7, 0.1, 0.65], [0.1, 0.8, 0.5, 0.1, 0.25], [0.0, 0.1, 0.0, 0.8, 0.1]],
        # bg max 0.1 → 0.07 → floor 0.2; class 1 untagged; class 2 max 0.3 → 0.18 → floor 0.2.
        [[0.1, 0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.9, 0.9, 0.9], [0.3, 0.19, 0.21, 0.0, 0.25]],
    )
    tags = torch.tensor([[1, 0], [0, 1]])
    labels = pseudo_labels_from_masks(masks, tags)
    assert labels.dtype == torch.int64 and labels.shape == (2, 1, 5)
    assert labels[0, 0].tolist() == [0, 1, IGN, IGN, 0]  # pixel 2 above two thresholds, pixel 3 none
    assert labels[1, 0].tolist() == [2, IGN, 2, IGN, 2]
    assert masks[0, 2, 0, 3] == pytest.approx(0.8)  # the caller's masks are not modified


def test_ties_are_not_above_the_threshold():
    # Scales and values exact in binary: bg threshold 0.5·1.0 = 0.5, class 1 max(0.5·0.5, 0.25).
    masks = _masks([[1.0, 0.5, 0.25, 0.75], [0.0, 0.25, 0.5, 0.5]])
    labels = pseudo_labels_from_masks(
        masks, torch.tensor([[1]]), bg_threshold_scale=0.5, fg_threshold_scale=0.5, min_threshold=0.25
    )
    assert labels[0, 0].tolist() == [0, IGN, 1, IGN]


def test_weighted_loss_by_hand_and_gating():
    labels = torch.tensor(
        [
            [[0, 1], [1, IGN]],  # tags {1}: bg 1 px, class 1 2 px → counts
            [[0, 1], [1, 1]],  # tags {1, 2}: class 2 got no pixel → contributes 0
            [[IGN, IGN], [IGN, IGN]],  # no background pixel → contributes 0
        ]
    )
    tags = torch.tensor([[1, 0], [1, 1], [0, 0]])
    logits = torch.zeros(3, 3, 2, 2, requires_grad=True)
    with torch.no_grad():
        logits[0, 0, 0, 0] = 2.0
        logits[1, 2] = 5.0

    loss = self_supervised_loss(logits, labels, tags)
    # Image 0: N = 3; weights bg (3 − 1)/4 = 0.5, class 1 (3 − 2)/4 = 0.25; 4 pixels in the mean.
    ce_bg = math.log(1 + 2 * math.exp(-2))  # logits (2, 0, 0), label 0
    ce_fg = math.log(3)  # logits (0, 0, 0)
    image0 = (0.5 * ce_bg + 0.25 * ce_fg + 0.25 * ce_fg + 0.0) / 4
    assert loss.item() == pytest.approx(image0 / 3, rel=1e-6)  # batch mean over all 3 images

    loss.backward()
    assert logits.grad[0].abs().sum() > 0
    assert logits.grad[1:].abs().sum() == 0


def test_logits_are_upsampled_to_the_labels():
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(2, 4, 5, 6, generator=gen)
    labels = torch.randint(0, 4, (2, 9, 11), generator=gen)
    labels[:, 0, :3] = IGN
    tags = torch.ones(2, 3)
    big = F.interpolate(small, size=(9, 11), mode="bilinear", align_corners=True)
    torch.testing.assert_close(
        self_supervised_loss(small, labels, tags), self_supervised_loss(big, labels, tags)
    )


def test_shape_errors_are_explicit():
    with pytest.raises(ValueError, match="background first"):
        pseudo_labels_from_masks(torch.rand(1, 3, 4, 4), torch.ones(1, 3))
    with pytest.raises(ValueError, match="pseudo labels must be"):
        self_supervised_loss(torch.rand(1, 3, 2, 2), torch.full((1, 2, 2), 7), torch.ones(1, 2))


def test_learned_background_layout_has_no_background_threshold():
    # Two learned channels, both tagged: each pixel goes to the channel above 0.6·its peak alone.
    masks = torch.tensor([[[[0.9, 0.5, 0.1]], [[0.1, 0.5, 0.9]]]])
    tags = torch.tensor([[1.0, 1.0]])
    labels = pseudo_labels_from_masks(masks, tags, background=False)
    assert labels.tolist() == [[[0, 255, 1]]]
    # An untagged channel is zeroed; the image then still counts (only tagged classes required).
    labels = pseudo_labels_from_masks(masks, torch.tensor([[1.0, 0.0]]), background=False)
    assert labels.tolist() == [[[0, 255, 255]]]  # 0.5 is not above 0.6·0.9
    logits = torch.zeros(1, 2, 1, 3, requires_grad=True)
    loss = self_supervised_loss(logits, labels, torch.tensor([[1.0, 0.0]]), background=False)
    loss.backward()
    assert logits.grad.abs().sum() == 0  # N_c = N for the only class: weight (N - N_c)/(1 + N) = 0
    with pytest.raises(ValueError, match="no background channel"):
        pseudo_labels_from_masks(masks, torch.ones(1, 1), background=False)


def test_class_gating_learns_from_crops_with_many_tags():
    # Five tagged classes, pseudo pixels for two of them only: the published per-image gating
    # drops the crop, per-class gating learns from the pixels it has.
    labels = torch.tensor([[[0, 1], [2, IGN]]])
    tags = torch.tensor([[1, 1, 1, 1, 1]])
    logits = torch.zeros(1, 6, 2, 2, requires_grad=True)
    assert self_supervised_loss(logits, labels, tags, gating="image").item() == 0.0
    per_class = self_supervised_loss(logits, labels, tags, gating="class")
    # N = 3 pseudo pixels, each class 1 of them: weight (3 − 1)/4, cross-entropy log 6, 4 pixels.
    assert per_class.item() == pytest.approx(3 * 0.5 * math.log(6) / 4, rel=1e-6)
    per_class.backward()
    assert logits.grad.abs().sum() > 0
    assert counting_images(labels, tags, 6, gating="image").tolist() == [False]
    assert counting_images(labels, tags, 6, gating="class").tolist() == [True]
    # A crop without any pseudo pixel counts under neither.
    empty = torch.full((1, 2, 2), IGN)
    assert counting_images(empty, tags, 6, gating="class").tolist() == [False]
    with pytest.raises(ValueError, match="gating"):
        self_supervised_loss(logits, labels, tags, gating="pixel")


def test_idle_self_supervision_is_a_warning(caplog):
    from wsseg.pipeline.weak import warn_if_self_supervision_idle

    history = [{"epoch": 1}, {"epoch": 2, "train_self_crops_used": 0.0}, {"epoch": 3, "train_self_crops_used": 0.25}]
    with caplog.at_level("WARNING"):
        warn_if_self_supervision_idle(history, "image")
    assert "used no crop in epoch(s) 2" in caplog.text and "self_supervised_gating: class" in caplog.text
    caplog.clear()
    warn_if_self_supervision_idle(history[2:], "image")
    assert caplog.text == ""


def test_a_budget_that_ends_before_self_supervision_is_a_warning(caplog):
    from wsseg.pipeline.config import SingleStageConfig
    from wsseg.pipeline.weak import warn_if_budget_left_no_self_supervision

    ss = SingleStageConfig(epochs=6, self_supervised_from_epoch=3, max_minutes=1.5)
    with caplog.at_level("WARNING"):
        warn_if_budget_left_no_self_supervision([{"epoch": 1}, {"epoch": 2}], ss)
    assert "max_minutes 1.5 left 2 of 6 epochs" in caplog.text and "starts in epoch 3: it never ran" in caplog.text
    caplog.clear()
    warn_if_budget_left_no_self_supervision([{"epoch": e} for e in (1, 2, 3)], ss)
    assert caplog.text == ""
