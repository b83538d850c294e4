"""Dubai aerial imagery (Humans in the Loop / MBRSC), as distributed::

    root/Tile {k}/images/image_part_{nnn}.jpg
    root/Tile {k}/masks/image_part_{nnn}.png      colour-coded; Tiles 2 and 4 are palette PNGs

`root` may be the "Semantic segmentation dataset" folder or the folder that contains it.

The shipped `classes.json` lists colours that the masks do not use; the colours below are the
ones found in the masks (all 72 masks checked: exactly these 7 colours, no compression noise, so
decoding is exact by default). Black (~0.5 % of pixels) is unlabelled → ignore. "Unlabeled"
(grey) is a real labelled category (ground the annotators left unassigned): it is trained like
ISPRS clutter and likewise left out of the mean scores.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np

from wsseg.datasets.base import ClassSpec, DatasetError, Tile, TileSource, with_problems
from wsseg.datasets.colour import decode_colour_mask
from wsseg.datasets.image_files import pair_problem, read_rgb


def _hex(code: str) -> tuple[int, int, int]:
    return int(code[1:3], 16), int(code[3:5], 16), int(code[5:7], 16)


DUBAI_CLASSES = ClassSpec(
    names=("building", "land", "road", "vegetation", "water", "unlabeled"),
    palette=tuple(_hex(c) for c in ("#3C1098", "#8429F6", "#6EC1E4", "#FEDD3A", "#E2A929", "#9B9B9B")),
    in_mean=("building", "land", "road", "vegetation", "water"),
)
_IGNORE_COLOURS = ((0, 0, 0),)
_TILE_FOLDER = re.compile(r"^Tile (\d+)$")
_PART = re.compile(r"^image_part_(\d+)$")
_DATASET_FOLDER = "Semantic segmentation dataset"


def dubai_source(root: str | Path, colour_tolerance: float = 0.0, check_sizes: bool = True) -> TileSource:
    """Tiles "tile{k}_part{nnn}" ordered by tile then part.

    `colour_tolerance` (Euclidean RGB distance) is 0: the masks are lossless and exact; raise it
    only for re-encoded copies of the dataset.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: Dubai aerial root folder not found")
    if (root / _DATASET_FOLDER).is_dir():
        root = root / _DATASET_FOLDER
    folders = sorted(((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _TILE_FOLDER.match(p.name))),
                     key=lambda item: item[0])
    if not folders:
        raise DatasetError(f"{root}: no 'Tile <k>' folders (expected the 'Semantic segmentation dataset' layout)")

    tiles, problems = [], []
    for k, folder in folders:
        images, masks = folder / "images", folder / "masks"
        for sub in (images, masks):
            if not sub.is_dir():
                raise DatasetError(f"{sub}: folder not found")
        parts = sorted(((int(m.group(1)), p) for p in images.glob("*.jpg") if (m := _PART.match(p.stem))),
                       key=lambda item: item[0])
        if not parts:
            raise DatasetError(f"{images}: no image_part_<n>.jpg images")
        for n, image_path in parts:
            mask_path, tile_id = masks / f"{image_path.stem}.png", f"tile{k}_part{n:03d}"
            if problem := pair_problem(tile_id, image_path, mask_path, "mask", check_sizes):
                problems.append(problem)
            else:
                tiles.append(Tile(tile_id, image_path, mask_path, None))

    return with_problems(TileSource("dubai", DUBAI_CLASSES, tiles, read_image=read_rgb,
                                    read_label=partial(_read_dubai_label, tolerance=colour_tolerance)), problems)


def _read_dubai_label(path: Path, tolerance: float) -> np.ndarray:
    # read_rgb expands the palette PNGs of Tiles 2 and 4 to RGB first.
    return decode_colour_mask(read_rgb(path), DUBAI_CLASSES.palette, path, ignore_colours=_IGNORE_COLOURS,
                              tolerance=tolerance)
