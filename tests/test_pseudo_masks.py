"""The decisions pseudo-mask generation takes from the calibration tiles, and what it reports."""

import numpy as np

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
    quality = PseudoMaskQuality(CLASSES, min_class_precision=0.0)
    labels = np.array([[1, 1], [255, 2]], np.uint8)
    quality.measure(labels, np.zeros((3, 2, 2)), np.zeros((3, 2, 2)), ground_truth=None)
    report = quality.report(tagged_classes=[0, 1, 2], tiles=1)
    assert report["classes_never_labelled"] == ["land"]
    assert report["coverage"] == 0.75 and report["tiles"] == 1


def test_the_crf_stays_on_only_if_it_helps_on_the_calibration_tiles():
    truth = np.array([[0, 0], [1, 2]], np.uint8)
    right = np.eye(3)[truth.ravel()].T.reshape(3, 2, 2)  # one-hot of the truth
    wrong = np.eye(3)[[1, 1, 1, 2]].T.reshape(3, 2, 2)
    labels = np.full((2, 2), 255, np.uint8)
    for before, after, kept in ((wrong, right, True), (right, wrong, False)):
        quality = PseudoMaskQuality(CLASSES, min_class_precision=0.0)
        quality.calibrate(labels, truth, before, after)
        assert (quality.crf_decision({"n_iter": 10}) is not None) == kept
        measured = quality.report(tagged_classes=[])["crf_calibration"]
        assert max(measured.values()) == 1.0
        assert (measured["miou_with_crf"] > measured["miou_without_crf"]) == kept
