import math

import numpy as np
import pytest
import torch

from wsseg.core.class_weights import class_pixel_counts, class_weights
from wsseg.core.metrics import (
    class_precision,
    confusion_matrix,
    majority_baseline_miou,
    segmentation_metrics,
)

NAMES = ["a", "b", "c"]
# Hand example: 8 pixels, one ignored.
TARGET = np.array([0, 0, 0, 1, 1, 2, 255, 2], dtype=np.uint8)
PRED = np.array([0, 0, 1, 1, 0, 2, 1, 1], dtype=np.uint8)
# rows = ground truth, columns = prediction, worked out by hand from the pairs above
HAND_CM = np.array([[2, 1, 0],
                    [1, 1, 0],
                    [0, 1, 1]])


def test_confusion_matrix_hand_example_numpy_and_torch():
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, HAND_CM)
    cm_t = confusion_matrix(torch.from_numpy(PRED), torch.from_numpy(TARGET), 3)
    assert isinstance(cm_t, torch.Tensor) and cm_t.dtype == torch.int64
    np.testing.assert_array_equal(cm_t.numpy(), HAND_CM)


def test_ignore_index_pixels_are_left_out_whatever_the_prediction():
    target = np.full((4, 4), 255, np.uint8)
    target[0, 0] = 1
    pred = np.full((4, 4), 2, np.uint8)
    cm = confusion_matrix(pred, target, 3)
    assert cm.sum() == 1 and cm[1, 2] == 1
    # a custom ignore value works too
    cm = confusion_matrix(np.array([0, 1]), np.array([7, 1]), 2, ignore_index=7)
    np.testing.assert_array_equal(cm, [[0, 0], [0, 1]])


def test_out_of_range_values_are_errors():
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(np.array([0]), np.array([5]), 3)
    with pytest.raises(ValueError, match="prediction"):
        confusion_matrix(np.array([4]), np.array([0]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros(3), np.zeros(4), 3)


def test_accumulating_batches_equals_one_pass():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(5, 17, 13)).astype(np.uint8)
    target[rng.random(target.shape) < 0.2] = 255
    pred = rng.integers(0, 4, size=target.shape).astype(np.uint8)
    whole = confusion_matrix(pred, target, 4)
    summed = sum(confusion_matrix(p, t, 4) for p, t in zip(pred, target))
    np.testing.assert_array_equal(whole, summed)
    summed_t = sum(confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), 4) for p, t in zip(pred, target))
    np.testing.assert_array_equal(whole, summed_t.numpy())
    # and the scores of the accumulated matrix are not the mean of per-batch scores
    per_batch = np.mean([segmentation_metrics(confusion_matrix(p, t, 4), list("wxyz"))["miou"]
                         for p, t in zip(pred, target)])
    assert segmentation_metrics(whole, list("wxyz"))["miou"] != pytest.approx(per_batch, abs=1e-12)


def test_segmentation_metrics_hand_numbers():
    m = segmentation_metrics(HAND_CM, NAMES, NAMES)
    assert set(m) == {"miou", "mean_f1", "overall_accuracy", "per_class", "classes_in_mean"}
    pc = m["per_class"]
    assert set(pc["a"]) == {"iou", "f1", "precision", "recall", "support"}
    # tp = 2,1,1; gt = 3,2,2; pred = 3,3,1
    assert pc["a"]["iou"] == pytest.approx(2 / 4)
    assert pc["b"]["iou"] == pytest.approx(1 / 4)
    assert pc["c"]["iou"] == pytest.approx(1 / 2)
    assert pc["a"]["f1"] == pytest.approx(4 / 6)
    assert pc["b"]["f1"] == pytest.approx(2 / 5)
    assert pc["c"]["f1"] == pytest.approx(2 / 3)
    assert pc["b"]["precision"] == pytest.approx(1 / 3)
    assert pc["c"]["precision"] == pytest.approx(1.0)
    assert pc["b"]["recall"] == pytest.approx(1 / 2)
    assert [pc[n]["support"] for n in NAMES] == [3, 2, 2]
    assert m["overall_accuracy"] == pytest.approx(4 / 7)
    assert m["miou"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    assert m["classes_in_mean"] == NAMES


def test_classes_left_out_of_the_mean_still_count_in_overall_accuracy():
    m = segmentation_metrics(HAND_CM, NAMES, ["b", "a"])
    assert m["classes_in_mean"] == ["a", "b"]  # class order, not the order given
    assert m["miou"] == pytest.approx((0.5 + 0.25) / 2)
    assert m["mean_f1"] == pytest.approx((2 / 3 + 2 / 5) / 2)
    assert m["overall_accuracy"] == pytest.approx(4 / 7)


def test_absent_class_is_nan_and_skipped_but_false_positives_count():
    cm = np.zeros((4, 4), np.int64)
    cm[:3, :3] = HAND_CM
    m = segmentation_metrics(cm, NAMES + ["d"])
    d = m["per_class"]["d"]
    assert math.isnan(d["iou"]) and math.isnan(d["f1"]) and d["support"] == 0
    assert m["miou"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    # class d predicted once but never present: IoU 0, and it drags the mean down
    cm[0, 3] = 1
    m = segmentation_metrics(cm, NAMES + ["d"])
    assert m["per_class"]["d"]["iou"] == 0.0
    assert math.isnan(m["per_class"]["d"]["recall"])
    assert m["per_class"]["a"]["iou"] == pytest.approx(2 / 5)
    assert m["miou"] == pytest.approx((2 / 5 + 1 / 4 + 1 / 2 + 0) / 4)


def test_empty_matrix_gives_nan_scores():
    m = segmentation_metrics(np.zeros((2, 2), np.int64), ["x", "y"])
    assert math.isnan(m["miou"]) and math.isnan(m["overall_accuracy"])


def test_majority_baseline_by_hand():
    # majority training class is b (index 1); eval row sums 3, 2, 2 → all 7 pixels predicted b
    counts = np.array([10, 50, 5])
    assert majority_baseline_miou(counts, HAND_CM, NAMES) == pytest.approx((0 + 2 / 7 + 0) / 3)
    assert majority_baseline_miou(counts, HAND_CM, NAMES, ["a", "b"]) == pytest.approx((2 / 7) / 2)
    # a class missing from the evaluated pixels is NaN and skipped
    cm = np.array([[3, 0, 0], [0, 0, 0], [0, 0, 2]])
    assert majority_baseline_miou(np.array([9, 1, 1]), cm, NAMES) == pytest.approx((3 / 5 + 0) / 2)


def test_class_pixel_counts_numpy_and_torch():
    label = np.array([[0, 0, 2], [255, 2, 2]], np.uint8)
    np.testing.assert_array_equal(class_pixel_counts(label, 4), [2, 0, 3, 0])
    np.testing.assert_array_equal(class_pixel_counts(torch.from_numpy(label), 4).numpy(), [2, 0, 3, 0])
    with pytest.raises(ValueError):
        class_pixel_counts(np.array([9]), 4)


def test_class_weights_by_hand():
    counts = np.array([100, 300, 0, 600])
    # frequencies of present classes 0.1, 0.3, 0.6; 1/f = 10, 10/3, 5/3 with mean 5
    np.testing.assert_allclose(class_weights(counts, "inverse"), [2, 2 / 3, 0, 1 / 3], rtol=1e-6)
    # median frequency 0.3
    np.testing.assert_allclose(class_weights(counts, "median"), [3, 1, 0, 0.5], rtol=1e-6)
    assert class_weights(counts, "inverse", absent_weight=1.0)[2] == 1.0
    with pytest.raises(ValueError):
        class_weights(counts, "sqrt")


def test_a_dominant_background_among_many_classes_keeps_the_floor():
    # 59 classes: background 77 % of the pixels, 40 foreground classes sharing the rest with a
    # long tail (shares ∝ 1/rank), 18 classes absent from the labels.
    shares = 1.0 / np.arange(1, 41)
    counts = np.zeros(59)
    counts[0] = 0.77e6
    counts[1:41] = np.round(0.23e6 * shares / shares.sum())
    present = counts > 0
    median = class_weights(counts, "median")
    # The median is over the 41 present classes (over all 59 it would be 0, and so every weight);
    # the tail sets it, and the background is left with a weight of 0.00 at two decimals.
    freq = counts[present] / counts[present].sum()
    assert median[0] == pytest.approx(np.median(freq) / freq[0], rel=1e-5) and np.median(freq) > 0
    assert median[0] < 0.005
    assert class_weights(counts, "inverse")[0] < 0.005  # the mean of 1 / f is set by the tail too
    for mode in ("median", "inverse"):
        bounded = class_weights(counts, mode, absent_weight=1.0, floor=0.1, cap=10)
        assert np.isfinite(bounded).all()
        assert bounded[0] == pytest.approx(0.1) and bounded[present].min() >= np.float32(0.1)
        assert bounded[present].max() <= 10 and (bounded[~present] == 1.0).all()
    # The floor leaves a weight above it alone.
    above = median >= 0.1
    np.testing.assert_array_equal(class_weights(counts, "median", floor=0.1)[above], median[above])


def test_class_precision():
    # rows: ground truth, columns: pseudo label
    cm = np.array([[8, 6, 0],
                   [2, 4, 0],
                   [0, 0, 0]])
    assert class_precision(cm) == [pytest.approx(0.8), pytest.approx(0.4), None]


def test_gap_closed_is_undefined_where_the_oracle_gains_almost_nothing():
    from wsseg.core.metrics import gap_closed

    assert gap_closed(0.50, 0.55, 0.60) == pytest.approx(0.5)
    # Dubai's building class: oracle 0.549 vs task i 0.547 would make task ii's 0.595 "2400 % closed".
    assert math.isnan(gap_closed(0.547, 0.595, 0.549))
    assert math.isnan(gap_closed(0.5, 0.6, 0.4)) and math.isnan(gap_closed(None, 0.6, 0.7))
