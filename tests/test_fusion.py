import numpy as np
import pytest


def test_fuse_with_segmenter_is_a_normalised_product_of_experts():
    from wsseg.pseudo_labels.fusion import fuse_with_segmenter

    weak = np.array([0.6, 0.3, 0.1], np.float32).reshape(3, 1, 1)
    segmenter = np.array([0.2, 0.7, 0.1], np.float32).reshape(3, 1, 1)
    allowed = np.array([1.0, 1.0, 1.0])
    np.testing.assert_allclose(fuse_with_segmenter(weak, segmenter, allowed, 0.0), weak, rtol=1e-5)
    np.testing.assert_allclose(fuse_with_segmenter(weak, segmenter, allowed, 1.0), segmenter, rtol=1e-5)
    half = np.sqrt(weak * segmenter)
    np.testing.assert_allclose(fuse_with_segmenter(weak, segmenter, allowed, 0.5), half / half.sum(), rtol=1e-5)
    # A class the crop is not tagged with is impossible, however sure the segmenter is of it.
    vetoed = fuse_with_segmenter(weak, segmenter, np.array([1.0, 0.0, 1.0]), 0.5)
    assert vetoed[1, 0, 0] == 0.0 and vetoed.sum() == pytest.approx(1.0)
    assert vetoed.argmax(0)[0, 0] == 0
    # A weighted geometric mean: where both agree, the confidence lies between theirs.
    agree = fuse_with_segmenter(np.array([0.7, 0.2, 0.1]).reshape(3, 1, 1),
                                np.array([0.8, 0.1, 0.1]).reshape(3, 1, 1), allowed, 0.5)
    assert 0.7 < agree[0, 0, 0] < 0.8


def test_fuse_with_segmenter_rejects_bad_weight_and_shapes():
    from wsseg.pseudo_labels.fusion import fuse_with_segmenter

    probs = np.full((2, 4, 4), 0.5, np.float32)
    with pytest.raises(ValueError, match="segmenter_weight"):
        fuse_with_segmenter(probs, probs, np.ones(2), 1.5)
    with pytest.raises(ValueError, match="shape"):
        fuse_with_segmenter(probs, probs[:, :2], np.ones(2), 0.5)


def test_allowed_classes_keeps_the_constant_logit_class():
    import torch

    from wsseg.models.single_stage import ClassLayout
    from wsseg.pseudo_labels.fusion import allowed_classes

    tags = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert allowed_classes(tags, ClassLayout(4, 2)).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert allowed_classes(tags, ClassLayout(4, None)).tolist() == tags.tolist()
    assert tags.tolist() == [1.0, 0.0, 0.0, 1.0]  # the caller's tags are not changed


def test_the_weak_expert_abstains_on_a_class_it_never_learned():
    from wsseg.pseudo_labels.fusion import fuse_with_segmenter

    # The weak model never learned class 0 (p 2e-4, sure of class 1 instead) where the segmenter
    # is sure of class 0: the product deletes class 0, an abstaining weak expert does not.
    weak = np.array([[2e-4, 0.3], [0.9998, 0.6], [0.0, 0.1]], np.float32).reshape(3, 1, 2)
    segmenter = np.array([[0.9, 0.1], [0.1, 0.1], [0.0, 0.8]], np.float32).reshape(3, 1, 2)
    allowed = np.ones(3)
    plain = fuse_with_segmenter(weak, segmenter, allowed, 0.5)
    assert plain.argmax(0).tolist() == [[1, 2]]
    abstain = np.array([True, False, False])
    guarded = fuse_with_segmenter(weak, segmenter, allowed, 0.5, abstain=abstain)
    assert guarded.argmax(0).tolist() == [[0, 2]]
    # weak' = (0.9, 0.9998, 0) / 1.8998; fused ∝ sqrt(weak' · segmenter) per class.
    weak0 = np.array([0.9, 0.9998, 0.0]) / 1.8998
    expected = np.sqrt(np.maximum(weak0, 1e-6) * np.maximum(segmenter[:, 0, 0], 1e-6))
    np.testing.assert_allclose(guarded[:, 0, 0], expected / expected.sum(), rtol=1e-4)
    # Nothing abstains: the plain product. The tags still veto an abstained class.
    np.testing.assert_allclose(fuse_with_segmenter(weak, segmenter, allowed, 0.5, abstain=np.zeros(3, bool)), plain)
    vetoed = fuse_with_segmenter(weak, segmenter, np.array([0.0, 1.0, 1.0]), 0.5, abstain=abstain)
    assert (vetoed[0] == 0).all() and np.allclose(vetoed.sum(0), 1)
