"""Fully connected CRF post-processing (Krähenbühl & Koltun 2011) through pydensecrf.

Parameters default to those of Araslanov & Roth (CVPR 2020): unary −log p with p clipped to [1e-5, 1]; a Gaussian kernel
(sxy 3, compat 3) and a bilateral kernel (sxy 80, srgb 13, compat 10); 10 mean-field steps.
pydensecrf is optional (the `crf` extra), so it is imported only when a CRF is run.
"""

from __future__ import annotations

import numpy as np


def _import_densecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:
        raise ImportError(
            "dense_crf needs pydensecrf: install the `pydensecrf2` package "
            "(pip install pydensecrf2, or the wsseg[crf] extra)"
        ) from exc
    return dcrf


def dense_crf(
    image_uint8: np.ndarray,
    probs: np.ndarray,
    n_iter: int = 10,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bilateral_sxy: float = 80,
    bilateral_srgb: float = 13,
    bilateral_compat: float = 10,
    clip: float = 1e-5,
) -> np.ndarray:
    """Posterior class probabilities K×H×W (float32) for `probs` K×H×W on image H×W×3 uint8.

    `probs` is used as given, not renormalised: the multi-scale maps with the background raised
    to the power 3 (Araslanov & Roth's inference) do not sum to one, and the published CRF step takes them
    as they are.
    """
    dcrf = _import_densecrf()
    image_uint8 = np.asarray(image_uint8)
    probs = np.asarray(probs)
    if image_uint8.dtype != np.uint8 or image_uint8.ndim != 3 or image_uint8.shape[2] != 3:
        raise ValueError(f"image must be H×W×3 uint8, got {image_uint8.shape} {image_uint8.dtype}")
    if probs.ndim != 3 or probs.shape[1:] != image_uint8.shape[:2]:
        raise ValueError(
            f"probs must be K×H×W matching the image {image_uint8.shape[:2]}, got {probs.shape}"
        )
    num_classes, height, width = probs.shape

    # The C++ side reads raw buffers: anything but C-contiguous float32 / uint8 is misread silently.
    unary = -np.log(np.clip(probs.astype(np.float64), clip, 1.0))
    unary = np.ascontiguousarray(unary.reshape(num_classes, -1), dtype=np.float32)
    image = np.ascontiguousarray(image_uint8)

    crf = dcrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=image, compat=bilateral_compat)
    posterior = crf.inference(n_iter)
    return np.asarray(posterior, dtype=np.float32).reshape(num_classes, height, width)
