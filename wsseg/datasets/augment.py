"""Random augmentations driven by a numpy Generator, so that a sample is a function of its seed.

torchvision v2 functionals on `tv_tensors.Image` / `tv_tensors.Mask`: the geometric ones move
an image and its mask together.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torchvision import tv_tensors


# The augmentations a training config can name. Flips and quarter turns are symmetries of
# overhead views only: a street scene upside down is no street scene.
AUGMENTATIONS = ("hflip", "vflip", "rot90", "colour", "scale")
OVERHEAD = ("hflip", "vflip", "rot90")


def augmentation_set(augment: bool | Sequence[str], default: Sequence[str],
                     known: Sequence[str] = AUGMENTATIONS) -> frozenset[str]:
    """`augment` as a set of names: True gives `default`, False none; names outside `known` are errors."""
    if augment is True:
        return frozenset(default)
    if augment is False:
        return frozenset()
    unknown = sorted(set(augment) - set(known))
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; known here: {', '.join(known)}")
    return frozenset(augment)


def random_dihedral(image: torch.Tensor, mask: torch.Tensor | None, rng: np.random.Generator,
                    hflip: bool = True, vflip: bool = True, rot90: bool = True):
    """Flips and a multiple of 90°: the 8 symmetries that nadir aerial views are invariant to.

    All three draws are made whichever are enabled, so a sample's other augmentations do not
    depend on which of these a config turned off."""
    flip_h, flip_v, quarter_turns = rng.random() < 0.5, rng.random() < 0.5, int(rng.integers(4))
    if hflip and flip_h:
        image = F.horizontal_flip(image)
        mask = F.horizontal_flip(mask) if mask is not None else None
    if vflip and flip_v:
        image = F.vertical_flip(image)
        mask = F.vertical_flip(mask) if mask is not None else None
    if rot90 and quarter_turns and image.shape[-1] == image.shape[-2]:
        image = tv_tensors.wrap(torch.rot90(image, quarter_turns, dims=(-2, -1)), like=image)
        if mask is not None:
            mask = tv_tensors.wrap(torch.rot90(mask, quarter_turns, dims=(-2, -1)), like=mask)
    return image, mask


def random_colour_jitter(image: torch.Tensor, rng: np.random.Generator,
                         jitter: Sequence[float] = (0.3, 0.3, 0.3, 0.1)) -> torch.Tensor:
    """ColorJitter(brightness, contrast, saturation, hue) with factors drawn from `rng`, random order."""
    brightness, contrast, saturation, hue = jitter
    steps = []
    if brightness:
        steps.append((F.adjust_brightness, rng.uniform(max(0.0, 1 - brightness), 1 + brightness)))
    if contrast:
        steps.append((F.adjust_contrast, rng.uniform(max(0.0, 1 - contrast), 1 + contrast)))
    if saturation:
        steps.append((F.adjust_saturation, rng.uniform(max(0.0, 1 - saturation), 1 + saturation)))
    if hue:
        steps.append((F.adjust_hue, rng.uniform(-hue, hue)))
    for i in rng.permutation(len(steps)):
        function, factor = steps[i]
        image = function(image, float(factor))
    return image


def random_resized_box(height: int, width: int, rng: np.random.Generator, scale=(0.9, 1.0),
                       ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop chooses them, from `rng`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return 0, 0, height, width


# The strong views of weak-to-strong consistency (FixMatch, UniMatch) are photometric, so that a
# prediction on the weak view stays their pixel-aligned target: UniMatch's stronger colour
# jitter, on 80 % of the crops; CutMix boxes of RandomErasing's sizes and shapes.
STRONG_COLOUR_JITTER = (0.5, 0.5, 0.5, 0.25)
STRONG_COLOUR_P = 0.8
CUTOUT_SCALE = (0.02, 0.4)
CUTOUT_RATIO = (0.3, 3.3)


def random_cutout_box(height: int, width: int, rng: np.random.Generator, scale=CUTOUT_SCALE,
                      ratio=CUTOUT_RATIO) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of a rectangle as torchvision's RandomErasing chooses it, or None if none fits."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = height * width * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if 0 < h < height and 0 < w < width:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return None


# The strong view of the tag-free semi-supervised arm, UniMatch's (Yang et al. 2023): its colour
# jitter on 80 % of the crops, greyscale on 20 %, a Gaussian blur of σ in [0.1, 2] on half.
# CutMix (its other strong perturbation) mixes two crops of a batch, so it happens on the batch.
GREYSCALE_P = 0.2
BLUR_P = 0.5
BLUR_SIGMA = (0.1, 2.0)


def strong_colour_view(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A strongly augmented copy of a float 3×H×W image in [0, 1] whose pixels stay where they are.

    Every draw is made whether or not it is applied, so that one crop's later draws (its CutMix
    box) do not depend on the outcome of these."""
    jitter, grey, blur, sigma = rng.random(), rng.random(), rng.random(), rng.uniform(*BLUR_SIGMA)
    strong = tv_tensors.Image(image.clone())
    if jitter < STRONG_COLOUR_P:
        strong = random_colour_jitter(strong, rng, STRONG_COLOUR_JITTER)
    if grey < GREYSCALE_P:
        strong = F.rgb_to_grayscale(strong, num_output_channels=3)
    if blur < BLUR_P:
        kernel = 2 * math.ceil(3 * sigma) + 1
        strong = F.gaussian_blur(strong, [kernel, kernel], [sigma, sigma])
    # Not in place: greyscale returns one channel expanded to three.
    return strong.as_subclass(torch.Tensor).clamp(0.0, 1.0).contiguous()
