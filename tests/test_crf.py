import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsseg.pseudo_labels.crf import dense_crf

requires_pydensecrf = pytest.mark.skipif(
    importlib.util.find_spec("pydensecrf") is None, reason="pydensecrf2 is the optional `crf` extra"
)


def _two_colour_scene(height=64, width=80, seed=0):
    """A red disc on a blue ground with mild noise, and its true mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    truth = ((yy - 30) ** 2 + (xx - 38) ** 2 < 18**2).astype(np.int64)
    colours = np.where(truth[..., None] == 1, [200, 40, 40], [30, 90, 200]).astype(np.float64)
    image = np.clip(colours + rng.normal(0, 5, colours.shape), 0, 255).astype(np.uint8)
    return image, truth


def _iou(pred, truth):
    return ((pred == 1) & (truth == 1)).sum() / ((pred == 1) | (truth == 1)).sum()


@requires_pydensecrf
def test_crf_snaps_a_shifted_blurred_map_to_the_colour_edges():
    image, truth = _two_colour_scene()
    # The network's view: the disc displaced by (5, 6) px, blurred, and never confident.
    shifted = torch.from_numpy(np.roll(truth, (5, 6), axis=(0, 1))).float()[None, None]
    blurred = F.avg_pool2d(F.pad(shifted, (4, 4, 4, 4), mode="replicate"), 9, stride=1)[0, 0].numpy()
    fg = 0.25 + 0.5 * blurred
    probs = np.stack([1 - fg, fg]).astype(np.float32)

    posterior = dense_crf(image, probs)
    assert posterior.shape == probs.shape and posterior.dtype == np.float32
    np.testing.assert_allclose(posterior.sum(0), 1.0, atol=1e-5)
    iou_before, iou_after = _iou(probs.argmax(0), truth), _iou(posterior.argmax(0), truth)
    assert iou_before < 0.7
    assert iou_after > iou_before + 0.25, (iou_before, iou_after)


@requires_pydensecrf
def test_zero_iterations_return_the_clipped_unary():
    image, _ = _two_colour_scene(16, 20)
    probs = np.zeros((3, 16, 20), dtype=np.float32)
    probs[0], probs[1, :, :10] = 1.0, 0.5  # zeros are clipped to 1e-5 before the log
    expected = np.clip(probs, 1e-5, 1.0)
    expected /= expected.sum(0, keepdims=True)
    np.testing.assert_allclose(dense_crf(image, probs, n_iter=0), expected, rtol=1e-4, atol=1e-7)


@requires_pydensecrf
def test_rejects_bad_inputs():
    image, _ = _two_colour_scene(16, 20)
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), np.full((2, 16, 20), 0.5))
    with pytest.raises(ValueError, match="K×H×W"):
        dense_crf(image, np.full((2, 20, 16), 0.5))


def test_missing_pydensecrf_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError, match="pydensecrf2"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 4), 0.5))
