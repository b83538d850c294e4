"""Torch datasets of pixel-labelled tiles: random training crops, cut lazily, and whole tiles for
evaluation. The crops of tagged tiles are `datasets.tagged_crops`.

Images and masks come out as `datasets.tensors` describes. Randomness comes from a numpy
Generator seeded with (seed, epoch, index), so sample `index` of epoch `e` is the same crop with
any number of workers, any shuffling, and after a resume; `set_epoch` (called by the training
loop) moves to new crops each epoch. The augmentations are torchvision v2 functionals on
`tv_tensors.Image` / `tv_tensors.Mask`, driven by that Generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from wsseg.datasets.augment import OVERHEAD, augmentation_set, random_colour_jitter, random_dihedral
from wsseg.datasets.base import IGNORE_INDEX, DatasetError, TileSource
from wsseg.datasets.colour import check_indices
from wsseg.datasets.image_files import image_size, read_index_png
from wsseg.datasets.tensors import _as_float_image, _as_long_mask, to_image_tensor, to_mask_tensor
from wsseg.datasets.tile_cache import DEFAULT_CACHE_BYTES, TileCache


def _cut(array: np.ndarray, y: int, x: int, h: int, w: int, fill: int) -> np.ndarray:
    """array[y:y+h, x:x+w], padded with `fill` where the window leaves the array."""
    part = array[max(y, 0):y + h, max(x, 0):x + w]
    if part.shape[:2] == (h, w):
        return part
    out = np.full((h, w) + array.shape[2:], fill, dtype=array.dtype)
    out[:part.shape[0], :part.shape[1]] = part
    return out


def _check_tiles(source: TileSource, tile_ids: Sequence[str], what: str) -> list[str]:
    tile_ids = list(tile_ids)
    if not tile_ids:
        raise DatasetError(f"{what}: no tiles given")
    for tile_id in tile_ids:
        source.tile(tile_id)
    return tile_ids


class RandomCropDataset(Dataset):
    """`samples_per_epoch` random crops from `tile_ids` → (image, mask).

    A tile is picked with probability proportional to its area (uniform over pixels), then a
    uniform position inside it. Tiles smaller than `crop_px` are padded: image 0, mask ignore.
    `label_override` maps a tile to an index PNG (255 = ignore), e.g. a pseudo mask, used instead
    of its ground truth; when given it must cover every tile, so that a tagged tile's real labels
    can never slip into training. `images_only`: no label file is read, every mask is all ignore
    (the unlabelled images of a semi-supervised arm, which may have no labels at all).
    """

    def __init__(self, source: TileSource, tile_ids: Sequence[str], crop_px: int, samples_per_epoch: int,
                 augment: bool | Sequence[str] = True, label_override: dict[str, Path] | None = None,
                 seed: int = 0, *, colour_jitter: Sequence[float] | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, images_only: bool = False):
        self.source = source
        self.tile_ids = _check_tiles(source, tile_ids, "RandomCropDataset")
        self.images_only = bool(images_only)
        if self.images_only and label_override is not None:
            raise DatasetError("RandomCropDataset: images_only reads no labels, label_override gives some")
        if crop_px <= 0 or samples_per_epoch < 0:
            raise DatasetError(f"RandomCropDataset: crop_px must be positive and samples_per_epoch non-negative, "
                               f"got {crop_px} and {samples_per_epoch}")
        self.crop_px = int(crop_px)
        self.samples_per_epoch = int(samples_per_epoch)
        # True: the overhead symmetries, plus colour jitter when `colour_jitter` is given.
        self.augment = augmentation_set(augment, OVERHEAD + (("colour",) if colour_jitter else ()),
                                        known=OVERHEAD + ("colour",))
        self.colour_jitter = tuple(colour_jitter) if colour_jitter else (0.3, 0.3, 0.3, 0.1)
        self.seed = int(seed)
        self.epoch = 0
        self.label_override = None
        if label_override is not None:
            self.label_override = {str(k): Path(v) for k, v in label_override.items()}
            missing = [t for t in self.tile_ids if t not in self.label_override]
            if missing:
                raise DatasetError(f"RandomCropDataset: label_override has no mask for tiles {missing}")
            for tile_id in self.tile_ids:
                if not self.label_override[tile_id].is_file():
                    raise DatasetError(f"{self.label_override[tile_id]}: override mask of tile {tile_id!r} not found")
        sizes = [image_size(source.tile(t).image_path) for t in self.tile_ids]
        areas = np.array([h * w for h, w in sizes], dtype=np.float64)
        self.tile_probabilities = areas / areas.sum()
        self.cache = TileCache(cache_bytes)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _load(self, tile_id: str) -> tuple[np.ndarray, np.ndarray]:
        image = self.source.image(tile_id)
        if self.images_only:
            return image, np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        if self.label_override is not None:
            path = self.label_override[tile_id]
            label = check_indices(read_index_png(path), self.source.classes.num_classes, path)
        else:
            path = self.source.tile(tile_id).label_path
            label = self.source.label(tile_id)
        if label.shape != image.shape[:2]:
            raise DatasetError(f"{path}: mask is {label.shape[0]}×{label.shape[1]} but the image of tile "
                               f"{tile_id!r} is {image.shape[0]}×{image.shape[1]}")
        return image, label

    def __getitem__(self, index: int):
        image, mask, _, _ = self.sample(index)
        return image, mask

    def _draw_tile(self, rng: np.random.Generator) -> str:
        return self.tile_ids[int(rng.choice(len(self.tile_ids), p=self.tile_probabilities))]

    def tile_id_of(self, index: int) -> str:
        """The tile crop `index` of this epoch comes from (the crop's first draw), without loading it."""
        return self._draw_tile(np.random.default_rng((self.seed, self.epoch, int(index))))

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor, tuple[str, int, int, int, int],
                                          np.random.Generator]:
        """Crop `index` as (image, mask, window, rng): its window (tile_id, y, x, h, w) in tile pixels
        before augmentation, and its generator after the crop's own draws, for further ones."""
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        tile_id = self._draw_tile(rng)
        image, label = self.cache.get(tile_id, lambda: self._load(tile_id))
        height, width = label.shape
        y = int(rng.integers(0, max(height - self.crop_px, 0) + 1))
        x = int(rng.integers(0, max(width - self.crop_px, 0) + 1))
        image_t = to_image_tensor(_cut(image, y, x, self.crop_px, self.crop_px, 0))
        mask_t = to_mask_tensor(_cut(label, y, x, self.crop_px, self.crop_px, IGNORE_INDEX))
        if self.augment & set(OVERHEAD):
            image_t, mask_t = random_dihedral(image_t, mask_t, rng, *(name in self.augment for name in OVERHEAD))
        if "colour" in self.augment:
            image_t = random_colour_jitter(image_t, rng, self.colour_jitter)
        window = (tile_id, y, x, self.crop_px, self.crop_px)
        return _as_float_image(image_t), _as_long_mask(mask_t), window, rng


class TileDataset(Dataset):
    """Whole tiles for evaluation → (image 3×H×W in [0, 1], mask int64 H×W, tile_id)."""

    def __init__(self, source: TileSource, tile_ids: Sequence[str], eroded: bool = False):
        self.source = source
        self.tile_ids = _check_tiles(source, tile_ids, "TileDataset")
        self.eroded = eroded

    def __len__(self) -> int:
        return len(self.tile_ids)

    def __getitem__(self, index: int):
        tile_id = self.tile_ids[index]
        image = self.source.image(tile_id)
        label = self.source.label(tile_id, eroded=self.eroded)
        if label.shape != image.shape[:2]:
            raise DatasetError(f"tile {tile_id!r}: mask {label.shape} and image {image.shape[:2]} differ in size")
        return _as_float_image(to_image_tensor(image)), torch.from_numpy(label.astype(np.int64)), tile_id
