"""Crop-level tags: which classes appear in each crop of a fixed grid over the tagged tiles, or
(image-level tags) in each whole tile.

The crops are cut once and the tags are written to a file; training then reads only that file for
the tagged tiles. Tags are never recomputed on random crops, which would leak pixel labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from wsseg.datasets.base import IGNORE_INDEX, DatasetError, TileSource


# `weak.tags`: "grid" (cells of `weak.tag_crop_px`) or "image" (one crop per tile, the whole image).
TAG_MODES = ("grid", "image")


def tags_title(mode: str) -> str:
    """What titles call the tags of `weak.tags` mode `mode`: a report on image-level tags that
    said "crop tags" would describe another experiment."""
    if mode not in TAG_MODES:
        raise DatasetError(f"weak.tags must be one of {', '.join(TAG_MODES)}, got {mode!r}")
    return "crop tags" if mode == "grid" else "image tags"


@dataclass(frozen=True)
class CropTag:
    tile_id: str
    y: int
    x: int
    h: int
    w: int
    classes: tuple[int, ...]


def _grid_starts(length: int, crop_px: int) -> list[int]:
    if length <= crop_px:
        return [0]
    starts = list(range(0, length - crop_px + 1, crop_px))
    if starts[-1] + crop_px < length:
        # Last crop flush with the border: it overlaps its neighbour, but edges get tags too.
        starts.append(length - crop_px)
    return starts


def grid_crops(height: int, width: int, crop_px: int) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) of full-size crops covering the tile, row by row.

    A side shorter than `crop_px` gets one crop of that side's full length.
    """
    if crop_px <= 0:
        raise DatasetError(f"crop_px must be positive, got {crop_px}")
    if height <= 0 or width <= 0:
        raise DatasetError(f"tile size must be positive, got {height}×{width}")
    h, w = min(height, crop_px), min(width, crop_px)
    return [(y, x, h, w) for y in _grid_starts(height, crop_px) for x in _grid_starts(width, crop_px)]


def tags_of_crop(label: np.ndarray, num_classes: int, min_fraction: float = 0.0,
                 ignore_index: int = IGNORE_INDEX) -> tuple[int, ...]:
    """Classes whose share of the crop's labelled pixels exceeds `min_fraction` (ignore not counted)."""
    counts = np.bincount(label.ravel(), minlength=256)[:num_classes]
    total = counts.sum()
    if total == 0:
        return ()
    return tuple(int(c) for c in np.nonzero(counts / total > min_fraction)[0])


def tag_mode(crop_px: int | None) -> str:
    """The `weak.tags` mode of a grid size: "grid", or "image" for None (one crop per tile)."""
    return "image" if crop_px is None else "grid"


def compute_crop_tags(source: TileSource, tile_ids: Iterable[str], crop_px: int | None,
                      min_fraction: float = 0.0) -> list[CropTag]:
    """Tags of every grid crop of `tile_ids`, from their full (not eroded) ground truth.

    `crop_px` None: image-level tags, one crop per tile covering the whole image.
    """
    if not 0.0 <= min_fraction < 1.0:
        raise DatasetError(f"min_fraction must be in [0, 1), got {min_fraction}")
    num_classes = source.classes.num_classes
    tags = []
    for tile_id in tile_ids:
        label = source.label(tile_id)
        height, width = label.shape[:2]
        crops = [(0, 0, height, width)] if crop_px is None else grid_crops(height, width, crop_px)
        for y, x, h, w in crops:
            classes = tags_of_crop(label[y:y + h, x:x + w], num_classes, min_fraction, source.classes.ignore_index)
            tags.append(CropTag(tile_id, y, x, h, w, classes))
    return tags


def save_crop_tags(path: str | Path, tags: Sequence[CropTag], crop_px: int | None,
                   class_names: Sequence[str]) -> None:
    """One JSON object: the mode ("grid" or "image"), the grid size (grid mode only), the class
    names, and per tile its crops as [y, x, h, w, [classes]]."""
    tiles: dict[str, list] = {}
    for tag in tags:
        tiles.setdefault(tag.tile_id, []).append([tag.y, tag.x, tag.h, tag.w, list(tag.classes)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    # One crop per line keeps the file diffable and readable.
    lines = ["{", f'  "mode": "{tag_mode(crop_px)}",']
    if crop_px is not None:
        lines.append(f'  "crop_px": {int(crop_px)},')
    lines += [f'  "class_names": {json.dumps(list(class_names))},', '  "tiles": {']
    for t, (tile_id, crops) in enumerate(tiles.items()):
        lines.append(f"    {json.dumps(tile_id)}: [")
        lines += [f"      {json.dumps(c)}{',' if i + 1 < len(crops) else ''}" for i, c in enumerate(crops)]
        lines.append(f"    ]{',' if t + 1 < len(tiles) else ''}")
    lines += ["  }", "}"]
    temporary.write_text("\n".join(lines) + "\n")
    temporary.replace(path)


def load_crop_tags(path: str | Path, expected_tile_ids: Iterable[str] | None = None,
                   num_classes: int | None = None, expected_mode: str | None = None,
                   class_names: Sequence[str] | None = None) -> list[CropTag]:
    """Read tags back, checking they belong to this split, these classes and this `weak.tags` mode.

    Errors: tags made in another mode than `expected_mode`, a tile not in `expected_tile_ids`, an
    expected tile missing, a class index outside 0..num_classes-1 (or a class-name count that
    differs), class names other than `class_names` (indices mean classes by position, so other
    names or another order would teach the wrong class), malformed crops, an image-tag tile with other than one crop at (0, 0), and a tile
    whose crops carry no tag at all (nothing for the classifier to learn from: almost certainly a
    bug). Files written before the mode was recorded are grid tags.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: crop tag file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    mode = data.get("mode", "grid")
    if mode not in TAG_MODES:
        raise DatasetError(f"{path}: unknown tag mode {mode!r}, expected one of {', '.join(TAG_MODES)}")
    if expected_mode is not None and mode != expected_mode:
        raise DatasetError(f"{path}: the tags were made with weak.tags: {mode}, but this run has weak.tags: "
                           f"{expected_mode}; resume with weak.tags: {mode}, or start a new run folder")
    for key in ("crop_px",) * (mode == "grid") + ("class_names", "tiles"):
        if key not in data:
            raise DatasetError(f"{path}: missing key {key!r}")
    tagged_names = data["class_names"]
    if not isinstance(tagged_names, list) or not all(isinstance(name, str) for name in tagged_names):
        raise DatasetError(f"{path}: 'class_names' must be a list of class name strings")
    if class_names is not None and tagged_names != list(class_names):
        unknown = [name for name in tagged_names if name not in class_names]
        what = f"classes {unknown} that the dataset does not have" if unknown else "the classes in another order"
        raise DatasetError(f"{path}: the tags name {what} (tags: {', '.join(tagged_names)}; dataset: "
                           f"{', '.join(class_names)})")
    if num_classes is not None and len(tagged_names) != num_classes:
        raise DatasetError(f"{path}: tags were made for {len(tagged_names)} classes {tagged_names}, "
                           f"the dataset has {num_classes}")
    limit = num_classes if num_classes is not None else len(tagged_names)
    tiles = data["tiles"]
    if not isinstance(tiles, dict):
        raise DatasetError(f"{path}: 'tiles' must map tile ids to crop lists")
    if expected_tile_ids is not None:
        expected = list(expected_tile_ids)
        unknown = [t for t in tiles if t not in set(expected)]
        if unknown:
            raise DatasetError(f"{path}: tags for tiles {unknown} that are not in the split's tagged/labelled tiles")
        missing = [t for t in expected if t not in tiles]
        if missing:
            raise DatasetError(f"{path}: no tags for tiles {missing} of the split")

    tags = []
    for tile_id, crops in tiles.items():
        if not isinstance(crops, list) or not crops:
            raise DatasetError(f"{path}: tile {tile_id!r} has no crops")
        for crop in crops:
            if (not isinstance(crop, list) or len(crop) != 5 or not all(isinstance(v, int) for v in crop[:4])
                    or not isinstance(crop[4], list)):
                raise DatasetError(f"{path}: tile {tile_id!r}: malformed crop {crop!r}, expected [y, x, h, w, [classes]]")
            y, x, h, w, classes = crop
            if y < 0 or x < 0 or h <= 0 or w <= 0:
                raise DatasetError(f"{path}: tile {tile_id!r}: crop {crop!r} has a negative position or empty size")
            for c in classes:
                if not isinstance(c, int) or not 0 <= c < limit:
                    raise DatasetError(f"{path}: tile {tile_id!r} crop at (y={y}, x={x}): class index {c!r} "
                                       f"outside 0..{limit - 1}")
            tags.append(CropTag(tile_id, y, x, h, w, tuple(sorted(set(classes)))))
        if mode == "image" and (len(crops) != 1 or crops[0][:2] != [0, 0]):
            raise DatasetError(f"{path}: image tags, but tile {tile_id!r} has {len(crops)} crop(s) {crops!r}, "
                               f"not one whole-image crop at (0, 0)")
        if not any(crop[4] for crop in crops):
            raise DatasetError(f"{path}: tile {tile_id!r} has {len(crops)} crops but not a single class tag")
    return tags


def tag_vector(tag: CropTag, num_classes: int) -> np.ndarray:
    """Multi-hot float32 vector of a crop's classes."""
    vector = np.zeros(num_classes, dtype=np.float32)
    vector[list(tag.classes)] = 1.0
    return vector


# What the grid tags say of a class in a window that is not a grid cell (`TagGrid.window_targets`).
TAG_POSITIVE, TAG_NEGATIVE, TAG_UNKNOWN = 1, 0, -1


class TagGrid:
    """The grid crop tags of some tiles, to read off what they say of any window of a tile.

    A class is *positive* in a window if a grid cell lying entirely inside it is tagged with the
    class (the cell's pixels are the window's), *negative* if no cell overlapping the window is
    tagged with it (the cells cover the tile, so no pixel of the window shows it), and *unknown*
    otherwise. Negatives are certain because the pipeline tags a cell with every class it shows
    (`compute_crop_tags` with min_fraction 0; a larger fraction drops rare classes). Windows are in tile pixels and may leave the tile
    (a padded crop of a small tile); flips and quarter turns of the crop change nothing.
    With image-level tags each tile is one cell: a window inside the tile has no positives and
    the classes absent from the image as negatives; a window holding the whole tile knows all.
    """

    def __init__(self, crop_tags: Iterable[CropTag], num_classes: int):
        self.num_classes = int(num_classes)
        boxes: dict[str, list] = {}
        multi_hot: dict[str, list] = {}
        for tag in crop_tags:
            boxes.setdefault(tag.tile_id, []).append((tag.y, tag.x, tag.y + tag.h, tag.x + tag.w))
            multi_hot.setdefault(tag.tile_id, []).append(tag_vector(tag, self.num_classes) > 0)
        # Per tile: cells as (top, left, bottom, right) rows, and their tags as a cells × classes table.
        self.cells = {t: np.array(b, dtype=np.int64) for t, b in boxes.items()}
        self.cell_tags = {t: np.stack(v) for t, v in multi_hot.items()}

    @property
    def tile_ids(self) -> list[str]:
        return list(self.cells)

    def window_targets(self, tile_id: str, y: int, x: int, h: int, w: int) -> np.ndarray:
        """int8 per class: TAG_POSITIVE, TAG_NEGATIVE or TAG_UNKNOWN for window (y, x, h, w) of the tile."""
        if tile_id not in self.cells:
            raise DatasetError(f"no grid crop tags for tile {tile_id!r}")
        top, left, bottom, right = self.cells[tile_id].T
        inside = (top >= y) & (left >= x) & (bottom <= y + h) & (right <= x + w)
        overlapping = (top < y + h) & (bottom > y) & (left < x + w) & (right > x)
        tags = self.cell_tags[tile_id]
        targets = np.full(self.num_classes, TAG_UNKNOWN, dtype=np.int8)
        targets[~tags[overlapping].any(0)] = TAG_NEGATIVE
        targets[tags[inside].any(0)] = TAG_POSITIVE
        return targets
