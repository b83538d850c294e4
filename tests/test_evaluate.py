from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wsseg.core.evaluate import (
    EvalResult,
    evaluate_tiles,
    predict_tile,
    sliding_window_logits,
    window_starts,
)
from wsseg.core.metrics import confusion_matrix
from wsseg.datasets.base import ClassSpec, Tile, TileSource
from wsseg.datasets.tensors import image_to_tensor


def pointwise_model(num_classes=4, seed=0):
    """A 1×1 conv: translation-equivariant with no spatial context, so any window tiling of the
    image must reproduce its full forward pass exactly."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, num_classes, 1)


def context_model(num_classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, padding=1))


class CallRecorder(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.batch_sizes = []
        self.modes = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        self.modes.append(self.training)
        return self.inner(x)


def full_forward(model, image):
    with torch.no_grad():
        return model.eval()(image[None])[0]


def test_window_starts_cover_the_axis_with_last_window_flush():
    for length, window, stride in [(300, 64, 48), (256, 64, 64), (65, 64, 16), (64, 64, 32), (10, 64, 32)]:
        starts = window_starts(length, window, stride)
        covered = np.zeros(max(length, window), bool)
        for s in starts:
            covered[s:s + window] = True
        assert covered[:length].all(), (length, window, stride)
        assert starts[-1] == max(0, length - window)
        assert starts == sorted(set(starts))
    assert window_starts(300, 64, 48) == [0, 48, 96, 144, 192, 236]


def test_single_window_covering_the_image_equals_one_forward_pass():
    # a model with spatial context: only a window exactly the image size sees the same borders
    model = context_model()
    image = torch.rand(3, 48, 48)
    out = sliding_window_logits(model, image, 4, window_px=48, stride_px=16)
    torch.testing.assert_close(out, full_forward(model, image), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (100, 70)])
def test_overlapping_windows_on_pointwise_model_equal_full_forward(size):
    model = pointwise_model()
    image = torch.rand(3, *size)
    out = sliding_window_logits(model, image, 4, window_px=32, stride_px=20, batch_size=3)
    assert out.dtype == torch.float32 and out.shape == (4, *size)
    assert torch.isfinite(out).all()  # an uncovered pixel would be 0/0 = NaN
    torch.testing.assert_close(out, full_forward(model, image), atol=1e-5, rtol=1e-5)


def test_edges_are_covered_when_size_is_not_a_stride_multiple():
    class Ones(nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 2, *x.shape[2:])
    out = sliding_window_logits(Ones(), torch.rand(3, 77, 91), 2, window_px=30, stride_px=25)
    # averaging exact ones gives exactly one everywhere, including the last row and column
    assert torch.equal(out, torch.ones(2, 77, 91))


@pytest.mark.parametrize("size", [(20, 30), (1, 5), (50, 10)])
def test_images_smaller_than_the_window_are_padded_and_cropped_back(size):
    model = pointwise_model()
    image = torch.rand(3, *size)
    out = sliding_window_logits(model, image, 4, window_px=32, stride_px=16)
    assert out.shape == (4, *size)
    torch.testing.assert_close(out, full_forward(model, image), atol=1e-5, rtol=1e-5)


def test_batches_are_bounded_model_is_evaluated_and_mode_restored():
    model = CallRecorder(pointwise_model())
    model.train()
    image = torch.rand(3, 70, 70)
    out = sliding_window_logits(model, image, 4, window_px=32, stride_px=16, batch_size=4)
    # 4 × 4 windows in batches of at most 4
    assert model.batch_sizes == [4, 4, 4, 4]
    assert model.modes == [False] * 4
    assert model.training
    one_by_one = sliding_window_logits(model, image, 4, window_px=32, stride_px=16, batch_size=1)
    torch.testing.assert_close(out, one_by_one)


def test_wrong_model_output_is_an_error():
    with pytest.raises(ValueError, match="logits of shape"):
        sliding_window_logits(pointwise_model(num_classes=3), torch.rand(3, 20, 20), 4, 16, 8)


def test_bfloat16_autocast_is_close_to_float32():
    model = context_model()
    image = torch.rand(3, 50, 50)
    ref = sliding_window_logits(model, image, 4, 32, 16)
    amp = sliding_window_logits(model, image, 4, 32, 16, amp_dtype=torch.bfloat16)
    assert amp.dtype == torch.float32
    torch.testing.assert_close(amp, ref, atol=0.05, rtol=0.05)


def test_predict_tile_accepts_uint8_images():
    model = pointwise_model()
    image = np.random.default_rng(0).integers(0, 256, (33, 45, 3), dtype=np.uint8)
    pred = predict_tile(model, image, 4, 16, 12)
    assert pred.dtype == np.uint8 and pred.shape == (33, 45)
    expected = full_forward(model, image_to_tensor(image)).argmax(0).numpy()
    np.testing.assert_array_equal(pred, expected)


class LabelInRed(nn.Module):
    """Predicts the class written in the red channel (value k/255 → class k), pixel by pixel."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        cls = (x[:, 0] * 255).round().long().clamp(0, self.num_classes - 1)
        return nn.functional.one_hot(cls, self.num_classes).permute(0, 3, 1, 2).float()


def make_source(with_eroded=True, num_tiles=3, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images, labels, tiles = {}, {}, []
    for i in range(num_tiles):
        h, w = 37 + 5 * i, 41 + 3 * i
        pred = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0] = pred
        gt = np.where(rng.random((h, w)) < 0.7, pred, rng.integers(0, num_classes, (h, w))).astype(np.uint8)
        gt[0, :] = 255
        eroded = gt.copy()
        eroded[:, :4] = 255
        tid = f"t{i}"
        images[Path(f"{tid}.img")] = image
        labels[Path(f"{tid}.gt")] = gt
        labels[Path(f"{tid}.ero")] = eroded
        tiles.append(Tile(tid, Path(f"{tid}.img"), Path(f"{tid}.gt"), Path(f"{tid}.ero") if with_eroded else None))
    classes = ClassSpec(names=("a", "b", "c"), palette=((255, 0, 0), (0, 255, 0), (0, 0, 255)), in_mean=("a", "b"))
    source = TileSource("toy", classes, tiles, read_image=images.__getitem__, read_label=labels.__getitem__)
    return source, images, labels


def test_evaluate_tiles_accumulates_one_matrix_full_and_eroded():
    source, images, labels = make_source()
    ids = ["t0", "t1", "t2"]
    result = evaluate_tiles(LabelInRed(3), source, ids, window_px=16, stride_px=12, batch_size=4,
                            device="cpu", keep_predictions=["t1"], progress=False)
    assert isinstance(result, EvalResult)
    expected = sum(confusion_matrix(images[Path(f"{t}.img")][..., 0], labels[Path(f"{t}.gt")], 3) for t in ids)
    expected_ero = sum(confusion_matrix(images[Path(f"{t}.img")][..., 0], labels[Path(f"{t}.ero")], 3) for t in ids)
    np.testing.assert_array_equal(result.cm, expected)
    np.testing.assert_array_equal(result.cm_eroded, expected_ero)
    assert list(result.predictions) == ["t1"]
    np.testing.assert_array_equal(result.predictions["t1"], images[Path("t1.img")][..., 0])

    m = result.metrics(source.classes)
    assert m["classes_in_mean"] == ["a", "b"]
    assert m["confusion_matrix"] == expected.tolist() and m["eroded"]["confusion_matrix"] == expected_ero.tolist()
    assert "eroded" in m and m["eroded"]["per_class"]["a"]["support"] < m["per_class"]["a"]["support"]
    tp = np.diag(expected)
    assert m["overall_accuracy"] == pytest.approx(tp.sum() / expected.sum())


def test_evaluate_tiles_without_eroded_ground_truth():
    source, _, _ = make_source(with_eroded=False, num_tiles=1)
    result = evaluate_tiles(LabelInRed(3), source, ["t0"], 16, 8, 2, "cpu", progress=False)
    assert result.cm_eroded is None and result.predictions == {}
    assert "eroded" not in result.metrics(source.classes)
    with pytest.raises(ValueError, match="keep_predictions"):
        evaluate_tiles(LabelInRed(3), source, ["t0"], 16, 8, 2, "cpu", keep_predictions=["zz"], progress=False)
