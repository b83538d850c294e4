"""The decisions pseudo-mask generation takes from the calibration tiles, and what it reports."""

import numpy as np

from wsseg.datasets.base import ClassSpec
from wsseg.pipeline.pseudo_masks import PseudoMaskQuality, unlearned_classes

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
