"""NumPy images and masks as the tensors every wsseg model takes and every dataset gives.

Contract with the models: images are float32 3×h×w in [0, 1], **not normalised** (each model
normalises inside, so a model carries its own input convention); masks are int64 h×w with 255
for ignore.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchvision import tv_tensors


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 H×W×3 RGB → float32 3×H×W in [0, 1]: the input every wsseg model takes."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 image, got shape {image.shape}")
    # float() copies, so read-only arrays (cached tiles) are never written through.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(np.ascontiguousarray(image))
    return tensor.permute(2, 0, 1).float().div_(255.0)


def to_image_tensor(image: np.ndarray) -> tv_tensors.Image:
    return tv_tensors.Image(image_to_tensor(image))


def to_mask_tensor(mask: np.ndarray) -> tv_tensors.Mask:
    return tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64)))


def _as_float_image(image: torch.Tensor) -> torch.Tensor:
    return image.as_subclass(torch.Tensor).clamp_(0.0, 1.0).contiguous()


def _as_long_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask.as_subclass(torch.Tensor).long().contiguous()
