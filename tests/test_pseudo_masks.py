"""The decisions pseudo-mask generation takes from the calibration tiles, and what it reports."""

import numpy as np
import pytest

from wsseg.core.metrics import unlearned_classes
from wsseg.datasets.base import ClassSpec
from wsseg.pipeline.pseudo_quality import PseudoMaskQuality

CLASSES = ClassSpec(("land", "road", "water"), ((0, 0, 0), (1, 1, 1), (2, 2, 2)))


def test_a_class_the_weak_model_never_finds_is_unlearned():
    # rows: ground truth, columns: the weak model's argmax on the calibration tiles
    cm = np.array([[1, 90, 9],    # land: recall 0.01, the failure of a never-predicted background
                   [0, 50, 0],    # road: recall 1
                   [0, 0, 0]])    # water: absent from the calibration tiles, so no verdict
    assert unlearned_classes(cm, 0.05).tolist() == [True, False, False]
    assert unlearned_classes(cm, 0.0).tolist() == [False, False, False]


def test_quality_report_names_tagged_classes_no_mask_contains():
    quality = PseudoMaskQuality(CLASSES)
    labels = np.array([[1, 1], [255, 2]], np.uint8)
    quality.measure(labels, np.zeros((3, 2, 2)), np.zeros((3, 2, 2)), ground_truth=None)
    report = quality.report(tagged_classes=[0, 1, 2], tiles=1)
    assert report["classes_never_labelled"] == ["land"]
    assert report["coverage"] == 0.75 and report["tiles"] == 1
    # No N2 ground truth (an image tagged without a mask): nothing to score the mask against.
    assert report["tiles_with_ground_truth"] == 0 and "miou_final" not in report and "per_class" not in report


def test_the_crf_stays_on_only_if_it_helps_on_the_calibration_tiles():
    truth = np.array([[0, 0], [1, 2]], np.uint8)
    right = np.eye(3)[truth.ravel()].T.reshape(3, 2, 2)  # one-hot of the truth
    wrong = np.eye(3)[[1, 1, 1, 2]].T.reshape(3, 2, 2)
    labels = np.full((2, 2), 255, np.uint8)
    for before, after, kept in ((wrong, right, True), (right, wrong, False)):
        quality = PseudoMaskQuality(CLASSES)
        quality.calibrate(labels, truth, before, after)
        assert quality.crf_decision() == kept
        measured = quality.report(tagged_classes=[])["crf_calibration"]
        assert max(measured.values()) == 1.0
        assert (measured["miou_with_crf"] > measured["miou_without_crf"]) == kept


def test_a_constant_background_that_never_wins_is_rejected(monkeypatch):
    from wsseg.models.single_stage import ClassLayout
    from wsseg.pipeline import pseudo_masks
    from wsseg.pipeline.pseudo_masks import BackgroundRejected, _check_background

    never_wins = np.array([[2, 90, 8], [0, 50, 0], [0, 0, 10]])  # land (the constant channel): recall 0.02
    constant, learned = ClassLayout(3, background_index=0), ClassLayout(3, background_index=None)
    assert pseudo_masks.REJECT_BACKGROUND_BELOW_RECALL == 0.05
    with pytest.raises(BackgroundRejected, match=r"'land' with recall 0\.0200 .*tile_a"):
        _check_background(constant, CLASSES, never_wins, ["tile_a"])
    # A learned layout or absent land give no verdict; nor does a recall above the threshold.
    _check_background(learned, CLASSES, never_wins, ["tile_a"])
    absent = never_wins.copy()
    absent[0] = 0
    _check_background(constant, CLASSES, absent, ["tile_a"])
    for threshold in (0.01, 0.0):
        monkeypatch.setattr(pseudo_masks, "REJECT_BACKGROUND_BELOW_RECALL", threshold)
        _check_background(constant, CLASSES, never_wins, ["tile_a"])
    monkeypatch.setattr(pseudo_masks, "REJECT_BACKGROUND_BELOW_RECALL", 0.05)
    try:
        _check_background(constant, CLASSES, never_wins, ["tile_a"])
    except BackgroundRejected as rejection:
        assert rejection.note == {"class": "land", "recall": 0.02, "threshold": 0.05, "calibration_tiles": ["tile_a"]}


def test_image_tags_are_predicted_at_the_training_size_with_the_aspect_kept():
    from types import SimpleNamespace

    import torch

    from wsseg.models.single_stage import ClassLayout, SingleStageSegmenter
    from wsseg.pipeline.config_files import config_from_dict
    from wsseg.pipeline.pseudo_inference import CropPredictor, inference_scales

    settings = {"single_stage": {"crop_px": 32}, "pseudo": {"scales": [1.0, 0.5]}}
    image_cfg = config_from_dict({"weak": {"tags": "image", **settings}})
    grid_cfg = config_from_dict({"weak": settings})
    assert inference_scales(grid_cfg, 40, 80) == (1.0, 0.5)  # grid crops: relative to the crop itself
    assert inference_scales(image_cfg, 40, 80) == pytest.approx((0.4, 0.2))
    assert inference_scales(image_cfg, 64, 16) == pytest.approx((0.5, 0.25))

    torch.manual_seed(0)
    model = SingleStageSegmenter(num_classes=2, width=0.0625).eval()
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    layout = ClassLayout(3, background_index=0)
    predictor = CropPredictor(image_cfg, SimpleNamespace(classes=CLASSES), model, layout, segmenter=None)
    predictor.use_pamr = False
    image, tags = torch.rand(3, 40, 80), torch.tensor([1.0, 1.0, 0.0])
    probs = predictor.weak_probabilities(image, tags)
    # The longer side at scale × crop_px, the shorter one in proportion; the probabilities at the image's size.
    assert seen == [(2, 3, 16, 32), (2, 3, 8, 16)]
    assert probs.shape == (3, 40, 80) and np.allclose(probs.sum(0), 1.0, atol=1e-5)
    assert (probs[2] == 0).all()  # not tagged
