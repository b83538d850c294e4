"""Input normalisation, the one home of its constants.

Every wsseg model takes float RGB in [0, 1] and normalises inside, with the statistics its
pretrained weights were trained with, so a checkpoint always carries its own input convention.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# The statistics torchvision's ImageNet weights (VGG, ResNet) and the ResNet-38 weights of
# Wu et al. (2019) were trained with, for RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def register_normalisation(module: nn.Module, mean: Sequence[float] = IMAGENET_MEAN,
                           std: Sequence[float] = IMAGENET_STD) -> None:
    """Give `module` the buffers `mean` and `std` (1×3×1×1) for `(x − mean) / std`.

    Not persistent: they are constants of the architecture, not weights, so state dicts stay
    free of them and load whatever the constants were when the checkpoint was written.
    """
    module.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
    module.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)


def normalisation_of(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a model normalises its input with: the outermost pair of `mean` / `std`
    buffers (a U-Net's live in its encoder); ImageNet's where a model registered none."""
    buffers = dict(model.named_buffers())
    for name, mean in buffers.items():
        prefix = name[: -len("mean")]
        if name.split(".")[-1] == "mean" and prefix + "std" in buffers:
            # Rounded: the float32 buffers would otherwise print as 0.48500001430511475.
            return (tuple(round(float(v), 6) for v in mean.flatten().tolist()),
                    tuple(round(float(v), 6) for v in buffers[prefix + "std"].flatten().tolist()))
    return IMAGENET_MEAN, IMAGENET_STD
