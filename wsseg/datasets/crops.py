"""Torch datasets that cut training samples out of whole tiles, lazily.

Contract with the models: images are float32 3×h×w in [0, 1], **not normalised** (each model
normalises inside, so a model carries its own input convention); masks are int64 h×w with 255
for ignore.

Randomness comes from a numpy Generator seeded with (seed, epoch, index), so sample `index` of
epoch `e` is the same crop with any number of workers, any shuffling, and after a resume;
`set_epoch` (called by the training loop) moves to new crops each epoch. The augmentations are
torchvision v2 functionals on `tv_tensors.Image` / `tv_tensors.Mask`, driven by that Generator.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode

from wsseg.datasets.augment import (OVERHEAD, augmentation_set, random_colour_jitter, random_dihedral,
                                    random_resized_box)
from wsseg.datasets.base import IGNORE_INDEX, DatasetError, TileSource
from wsseg.datasets.colour import check_indices
from wsseg.datasets.image_files import image_size, read_index_png
from wsseg.datasets.tags import CropTag, tag_vector

DEFAULT_CACHE_BYTES = 1 << 30


class TileCache:
    """Decoded tiles kept in memory, least recently used evicted beyond `max_bytes`.

    Each DataLoader worker holds its own copy of the dataset and therefore its own cache, so a
    tile is decoded at most once per worker while it stays in budget (a Vaihingen tile is ~20 MB
    decoded, the 26 training tiles ~0.5 GB). Pickling (spawned workers) sends an empty cache.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self.loads = 0

    def get(self, key, load: Callable[[], object]):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        value = load()
        self.loads += 1
        size = _nbytes(value)
        self._items[key] = (value, size)
        self._bytes += size
        # Always keep the newest entry, even if it alone exceeds the budget.
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, (_, evicted) = self._items.popitem(last=False)
            self._bytes -= evicted
        return value

    def __getitem__(self, key):
        return self._items[key][0]

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self):
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["max_bytes"])


def _nbytes(value) -> int:
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return int(getattr(value, "nbytes", 0))


# ---------------------------------------------------------------------------------- conversions
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


def _cut(array: np.ndarray, y: int, x: int, h: int, w: int, fill: int) -> np.ndarray:
    """array[y:y+h, x:x+w], padded with `fill` where the window leaves the array."""
    part = array[max(y, 0):y + h, max(x, 0):x + w]
    if part.shape[:2] == (h, w):
        return part
    out = np.full((h, w) + array.shape[2:], fill, dtype=array.dtype)
    out[:part.shape[0], :part.shape[1]] = part
    return out


def _as_float_image(image: torch.Tensor) -> torch.Tensor:
    return image.as_subclass(torch.Tensor).clamp_(0.0, 1.0).contiguous()


def _as_long_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask.as_subclass(torch.Tensor).long().contiguous()


def _check_tiles(source: TileSource, tile_ids: Sequence[str], what: str) -> list[str]:
    tile_ids = list(tile_ids)
    if not tile_ids:
        raise DatasetError(f"{what}: no tiles given")
    for tile_id in tile_ids:
        source.tile(tile_id)
    return tile_ids


# ------------------------------------------------------------------------------------- datasets
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
