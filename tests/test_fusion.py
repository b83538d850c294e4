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
