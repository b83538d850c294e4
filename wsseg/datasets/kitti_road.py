"""KITTI Road (Fritsch, Kühnl & Geiger, ITSC 2013), as the benchmark ships it::

    root/training/image_2/{um,umm,uu}_<nnnnnn>.png          1242×375 RGB frames
    root/training/gt_image_2/{um,umm,uu}_road_<nnnnnn>.png  road (255,0,255), non-road (255,0,0), black = invalid
    root/testing/image_2/...                                 frames without ground truth

`root` is `data_road` or the folder holding it. The `um_lane_*` masks (the ego-lane task of the
"um" category) are not read: the road task labels every category. Frames are urban marked
(um), urban multiple marked lanes (umm) and urban unmarked (uu); a tile id keeps the
category prefix, so that a split or a report can tell them apart.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from wsseg.datasets.base import (ClassSpec, DataOptionError, DatasetError, Tile, TileSource, check_unique_ids,
                                 with_problems)
from wsseg.datasets.colour import decode_colour_mask
from wsseg.datasets.image_files import pair_problem, read_rgb

KITTI_ROAD_CLASSES = ClassSpec(names=("non_road", "road"), palette=((255, 0, 0), (255, 0, 255)))
_INVALID_COLOURS = ((0, 0, 0),)
CATEGORIES = ("um", "umm", "uu")
_FRAME = re.compile(r"^(um|umm|uu)_(\d+)$")
# KITTI's own part names → wsseg's official parts (the testing frames have no ground truth).
_PARTS = {"training": "train", "testing": "test"}


def kitti_road_source(root: str | Path, categories: list[str] | None = None, check_sizes: bool = True) -> TileSource:
    """Tiles "<category>_<nnnnnn>" of every part present, training frames with their road masks.

    `categories`: read only these of um, umm, uu (default all)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: KITTI Road root folder not found")
    if (root / "data_road").is_dir():
        root = root / "data_road"
    wanted = tuple(categories) if categories else CATEGORIES
    unknown = sorted(set(wanted) - set(CATEGORIES))
    if unknown:
        raise DataOptionError(f"data.options.categories: KITTI Road categories {unknown} unknown; known: "
                              f"{', '.join(CATEGORIES)}")
    if not any((root / folder / "image_2").is_dir() for folder in _PARTS):
        raise DatasetError(f"{root}: no training/image_2 or testing/image_2 folder (expected the data_road layout)")

    tiles, problems = [], []
    for folder, part in _PARTS.items():
        images = root / folder / "image_2"
        if not images.is_dir():
            continue
        frames = sorted((m.group(1), int(m.group(2)), path) for path in images.glob("*.png")
                        if (m := _FRAME.match(path.stem)) and m.group(1) in wanted)
        for category, number, image_path in frames:
            tile_id = image_path.stem if part == "train" else f"test_{image_path.stem}"
            mask_path = None
            if part == "train":
                mask_path = root / folder / "gt_image_2" / f"{category}_road_{image_path.stem.split('_')[1]}.png"
                if problem := pair_problem(tile_id, image_path, mask_path, "road mask", check_sizes):
                    problems.append(problem)
                    continue
            tiles.append(Tile(tile_id, image_path, mask_path, part=part))
    if not tiles and not problems:
        raise DatasetError(f"{root}: no {'/'.join(wanted)}_<n>.png frames in training/image_2 or testing/image_2")
    return with_problems(TileSource("kitti_road", KITTI_ROAD_CLASSES, check_unique_ids(tiles), read_image=read_rgb,
                                    read_label=_read_road_mask), problems)


def _read_road_mask(path: Path) -> np.ndarray:
    return decode_colour_mask(read_rgb(path), KITTI_ROAD_CLASSES.palette, path, ignore_colours=_INVALID_COLOURS)
