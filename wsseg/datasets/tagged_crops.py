"""Torch datasets of the fixed-grid crops of tagged tiles: augmented crops with their multi-hot
tags (the single-stage model's training data), and the crops as stored (pseudo-mask generation).

They read only images, never a label file: the tags are all that is known of tagged tiles. As in
`datasets.crops`, crop `index` of epoch `e` is augmented from a numpy Generator seeded with
(seed, epoch, index).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode

from wsseg.datasets.augment import (OVERHEAD, augmentation_set, random_colour_jitter, random_dihedral,
                                    random_resized_box)
from wsseg.datasets.base import DatasetError, TileSource
from wsseg.datasets.crops import _check_tiles
from wsseg.datasets.tags import CropTag, tag_vector
from wsseg.datasets.tensors import _as_float_image, to_image_tensor
from wsseg.datasets.tile_cache import DEFAULT_CACHE_BYTES, TileCache


class TaggedCropDataset(Dataset):
    """The fixed-grid crops of `crop_tags` → (image, multi-hot float32 tags, index into crop_tags).

    Reads only images, never a label file: the tags are all that is known of tagged tiles.
    Output size is `crop_px` when given (crops of other sizes are resized, bicubic), else each
    crop's own size. Augmentation follows the single-stage recipe: random resized crop (scale
    0.9–1, bicubic back to size), flips, 90° rotations, ColorJitter(0.3, 0.3, 0.3, 0.1).

    `keep_aspect` (with `crop_px`; for image-level tags, and sensible for any non-square crop):
    the crop, or its random resized box, is resized evenly so that its longer side is `crop_px`,
    then mirrored into the rest of the `crop_px` square (`mirror_pad_to_square`), instead of
    being squashed into the square.
    """

    def __init__(self, source: TileSource, crop_tags: Sequence[CropTag], num_classes: int,
                 augment: bool | Sequence[str] = True,
                 crop_px: int | None = None, *, seed: int = 0, colour_jitter: Sequence[float] = (0.3, 0.3, 0.3, 0.1),
                 scale: tuple[float, float] = (0.9, 1.0), keep_aspect: bool = False,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.source = source
        self.crop_tags = list(crop_tags)
        if not self.crop_tags:
            raise DatasetError("TaggedCropDataset: no crop tags given")
        _check_tiles(source, sorted({t.tile_id for t in self.crop_tags}), "TaggedCropDataset")
        self.num_classes = int(num_classes)
        for tag in self.crop_tags:
            if any(not 0 <= c < self.num_classes for c in tag.classes):
                raise DatasetError(f"TaggedCropDataset: crop {tag} has a class outside 0..{self.num_classes - 1}")
        self.tag_vectors = torch.from_numpy(np.stack([tag_vector(t, self.num_classes) for t in self.crop_tags]))
        self.augment = augmentation_set(augment, ("scale",) + OVERHEAD + (("colour",) if colour_jitter else ()))
        self.crop_px = int(crop_px) if crop_px else None
        if keep_aspect and self.crop_px is None:
            raise DatasetError("TaggedCropDataset: keep_aspect needs crop_px, the side of the square to fill")
        self.keep_aspect = bool(keep_aspect)
        self.colour_jitter = tuple(colour_jitter) if colour_jitter else (0.3, 0.3, 0.3, 0.1)
        self.scale = tuple(scale)
        self.seed = int(seed)
        self.epoch = 0
        self.cache = TileCache(cache_bytes)

    def __len__(self) -> int:
        return len(self.crop_tags)

    def tile_id_of(self, index: int) -> str:
        tag = self.crop_tags[index]
        return f"{tag.tile_id} (y={tag.y}, x={tag.x})"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int):
        tag = self.crop_tags[index]
        image = self.cache.get(tag.tile_id, lambda: self.source.image(tag.tile_id))
        if tag.y + tag.h > image.shape[0] or tag.x + tag.w > image.shape[1]:
            raise DatasetError(f"crop (y={tag.y}, x={tag.x}, h={tag.h}, w={tag.w}) of tile {tag.tile_id!r} leaves "
                               f"its {image.shape[0]}×{image.shape[1]} image: tags made for another dataset?")
        image_t = to_image_tensor(image[tag.y:tag.y + tag.h, tag.x:tag.x + tag.w])
        out_hw = (self.crop_px, self.crop_px) if self.crop_px else (tag.h, tag.w)
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        box = random_resized_box(tag.h, tag.w, rng, self.scale) if "scale" in self.augment else None
        if self.keep_aspect:
            image_t = _resized_keeping_aspect(image_t, box, self.crop_px)
        elif box is not None:
            image_t = F.resized_crop(image_t, *box, list(out_hw), interpolation=InterpolationMode.BICUBIC,
                                     antialias=True)
        elif out_hw != (tag.h, tag.w):
            image_t = F.resize(image_t, list(out_hw), interpolation=InterpolationMode.BICUBIC, antialias=True)
        if self.augment & set(OVERHEAD):
            image_t, _ = random_dihedral(image_t, None, rng, *(name in self.augment for name in OVERHEAD))
        if "colour" in self.augment:
            image_t = random_colour_jitter(_as_float_image(image_t), rng, self.colour_jitter)
        return _as_float_image(image_t), self.tag_vectors[index].clone(), int(index)


def _resized_keeping_aspect(image: torch.Tensor, box: tuple[int, int, int, int] | None,
                            side_px: int) -> tv_tensors.Image:
    """`box` (top, left, h, w) of a 3×H×W image (None: all of it), resized evenly to a longer side
    of `side_px` (bicubic) and mirror-padded to a `side_px` square."""
    top, left, h, w = box if box is not None else (0, 0, image.shape[-2], image.shape[-1])
    factor = side_px / max(h, w)
    size = [min(side_px, max(1, round(h * factor))), min(side_px, max(1, round(w * factor)))]
    image = F.resized_crop(image, top, left, h, w, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return tv_tensors.Image(mirror_pad_to_square(_as_float_image(image), side_px))


def mirror_pad_to_square(image: torch.Tensor, side_px: int) -> torch.Tensor:
    """A 3×h×w image (h, w <= side_px) centred in a `side_px` square, the rest filled with its mirror image.

    Symmetric padding (edge pixels repeated, then the image reversed, again and again for a thin
    image): mirrored content holds only the image's own classes, so the image's tags stay true
    of the whole square, where zero padding would add a black region no class tag describes.
    """
    height, width = image.shape[-2:]
    if height > side_px or width > side_px:
        raise ValueError(f"a {height}×{width} image does not fit in a {side_px} px square")
    rows = _mirror_indices(height, side_px)
    columns = _mirror_indices(width, side_px)
    return image[..., rows[:, None], columns[None, :]]


def _mirror_indices(length: int, side_px: int) -> torch.Tensor:
    """Indices into 0..length-1 of a row of `side_px` with the row centred and mirrored outwards."""
    before = (side_px - length) // 2
    position = torch.arange(-before, side_px - before) % (2 * length)
    return torch.where(position < length, position, 2 * length - 1 - position)


class GridCropDataset(Dataset):
    """The fixed-grid crops of `crop_tags` as stored (uint8 H×W×3, not augmented) → (index, crop, tags).

    Pseudo-mask generation reads the crops tile by tile: each worker decodes a tile once.
    """

    def __init__(self, source: TileSource, crop_tags: Sequence[CropTag], num_classes: int):
        self.source, self.crop_tags, self.num_classes = source, list(crop_tags), num_classes
        self._tile_id, self._image = None, None

    def __len__(self) -> int:
        return len(self.crop_tags)

    def __getitem__(self, index: int):
        tag = self.crop_tags[index]
        if tag.tile_id != self._tile_id:
            self._tile_id, self._image = tag.tile_id, self.source.image(tag.tile_id)
        crop = np.ascontiguousarray(self._image[tag.y:tag.y + tag.h, tag.x:tag.x + tag.w])
        return index, crop, tag_vector(tag, self.num_classes)
