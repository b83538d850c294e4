"""ISPRS 2D semantic labelling (Vaihingen, Potsdam): the original release and mmsegmentation's crops.

Original layout (`vaihingen_source`)::

    root/top/top_mosaic_09cm_area{N}.tif                                  false colour IRRG
    root/gts_for_participants/top_mosaic_09cm_area{N}.tif                 colour ground truth
    root/gts_eroded_for_participants/top_mosaic_09cm_area{N}_noBoundary.tif   eroded (black = ignore)

mmsegmentation layout (`isprs_mmseg_source`), written by its `vaihingen.py`/`potsdam.py` converters
from the *eroded* ground truth::

    root/img_dir[/train|/val]/area1_0_0_512_512.png
    root/ann_dir[/train|/val]/area1_0_0_512_512.png     0 = boundary (ignore), 1..6 = the six classes
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np

from wsseg.datasets.base import (IGNORE_INDEX, OFFICIAL_PARTS, ClassSpec, DataProblem, DatasetError, Tile, TileSource,
                                 missing_file_problem, with_problems)
from wsseg.datasets.colour import decode_colour_mask
from wsseg.datasets.image_files import pair_problem, read_index_png, read_rgb, size_problem

# Clutter is trained as a class but left out of the 5-class mean, as the benchmark reports it.
VAIHINGEN_CLASSES = ClassSpec(
    names=("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"),
    palette=((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)),
    in_mean=("impervious_surfaces", "building", "low_vegetation", "tree", "car"),
)
POTSDAM_CLASSES = VAIHINGEN_CLASSES

OFFICIAL_TRAIN_AREAS = (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37)
OFFICIAL_TEST_AREAS = (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)
ALL_AREAS = tuple(sorted(OFFICIAL_TRAIN_AREAS + OFFICIAL_TEST_AREAS))

_IMAGE_NAME = re.compile(r"^top_mosaic_09cm_area(\d+)\.tif$")
_BOUNDARY_COLOUR = (0, 0, 0)


def image_name(area: int) -> str:
    return f"top_mosaic_09cm_area{area}.tif"


def eroded_name(area: int) -> str:
    return f"top_mosaic_09cm_area{area}_noBoundary.tif"


def _folder(root: Path, sub: str | Path, what: str) -> Path:
    folder = root / sub
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} folder not found (root {root})")
    return folder


def vaihingen_source(root: str | Path, image_dir: str = "top", label_dir: str = "gts_for_participants",
                     eroded_dir: str | None = "gts_eroded_for_participants", *, require_labels: bool = True,
                     colour_tolerance: float = 0.0, check_sizes: bool = True) -> TileSource:
    """The tiles of the original ISPRS Vaihingen release, ids "area{N}" in numeric order, each in
    the official part ("train" or "test") its area belongs to.

    The eroded folder is optional; when it holds any file it must cover every tile, so that evaluating
    on eroded ground truth never silently skips tiles. `require_labels=False` lists images that
    have no ground truth (e.g. the test tiles before the full ground truth was released) with
    `label_path=None`. Folder arguments may be absolute or relative to `root`. Every missing or
    mis-sized mask is reported in one DataProblemsError.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: Vaihingen root folder not found")
    images = _folder(root, image_dir, "image")
    labels = root / label_dir
    if require_labels and not labels.is_dir():
        raise DatasetError(f"{labels}: ground-truth folder not found (root {root}; "
                           f"pass label_dir=... if it is elsewhere)")
    eroded = root / eroded_dir if eroded_dir else None
    if eroded is not None and (not eroded.is_dir() or not any(eroded.glob("*_noBoundary.tif"))):
        eroded = None  # absent or empty: full ground truth only

    found = sorted(((int(m.group(1)), p) for p in images.iterdir() if (m := _IMAGE_NAME.match(p.name))),
                   key=lambda item: item[0])
    if not found:
        raise DatasetError(f"{images}: no images named top_mosaic_09cm_area<N>.tif")

    tiles, eroded_paths, problems = [], set(), []
    for area, image_path in found:
        tile_id, label_path = f"area{area}", labels / image_name(area)
        if not label_path.is_file():
            if require_labels:
                problems.append(missing_file_problem(tile_id, image_path, label_path, "ground truth"))
                continue
            label_path = None
        eroded_path = None
        if eroded is not None:
            eroded_path = eroded / eroded_name(area)
            if not eroded_path.is_file():
                problems.append(DataProblem(
                    str(image_path), f"no eroded ground truth {eroded_path} although {eroded} exists",
                    f"add {eroded_path.name}, or pass data.options.eroded_dir=null to use the full ground "
                    "truth only", tile_id))
                continue
        if check_sizes:
            mismatch = [p for path in (label_path, eroded_path)
                        if path is not None and (p := size_problem(tile_id, image_path, path))]
            if mismatch:
                problems += mismatch
                continue
        if eroded_path is not None:
            eroded_paths.add(eroded_path)
        part = "train" if area in OFFICIAL_TRAIN_AREAS else "test" if area in OFFICIAL_TEST_AREAS else None
        tiles.append(Tile(tile_id, image_path, label_path, eroded_path, part=part))

    # A partial of a module function (not a closure) keeps the source picklable for spawned workers.
    read_label = partial(_read_colour_label, eroded_paths=frozenset(eroded_paths), tolerance=colour_tolerance)
    return with_problems(TileSource("vaihingen", VAIHINGEN_CLASSES, tiles, read_image=read_rgb,
                                    read_label=read_label), problems)


def _read_colour_label(path: Path, eroded_paths: frozenset, tolerance: float) -> np.ndarray:
    # Black is the boundary marker only in the eroded files; in full ground truth it is an error.
    ignore = (_BOUNDARY_COLOUR,) if Path(path) in eroded_paths else ()
    return decode_colour_mask(read_rgb(path), VAIHINGEN_CLASSES.palette, path, ignore_colours=ignore,
                              tolerance=tolerance)


def _natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def isprs_mmseg_source(root: str | Path, split: str | None = None, name: str = "vaihingen_mmseg",
                       check_sizes: bool = True) -> TileSource:
    """mmsegmentation's converted ISPRS crops: ann 0 (eroded boundary) → ignore, 1..6 → classes 0..5.

    `split` picks a subfolder ("train", "val"); without it every PNG under img_dir is a tile, its
    id the file stem (`area1_0_0_512_512`), its mask the same relative path under ann_dir.
    The converter wrote these masks from the *eroded* ground truth, so `label()` is already the
    eroded one (boundaries ignored); there is no full ground truth in this layout. A tile's part
    is its subfolder: the converter's "val" holds the benchmark's official test areas.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: mmsegmentation ISPRS root folder not found")
    images = _folder(root, Path("img_dir") / (split or ""), "img_dir")
    annotations = _folder(root, Path("ann_dir") / (split or ""), "ann_dir")
    image_paths = sorted(images.rglob("*.png"), key=lambda p: _natural_key(p.relative_to(images).as_posix()))
    if not image_paths:
        raise DatasetError(f"{images}: no .png images")
    tiles, seen, problems = [], {}, []
    for image_path in image_paths:
        label_path, tile_id = annotations / image_path.relative_to(images), image_path.stem
        if tile_id in seen:
            raise DatasetError(f"{image_path}: tile id {tile_id!r} also used by {seen[tile_id]}; pass split=...")
        seen[tile_id] = image_path
        if problem := pair_problem(tile_id, image_path, label_path, "annotation", check_sizes):
            problems.append(problem)
            continue
        folder = image_path.relative_to(images).parts[0] if split is None else split
        tiles.append(Tile(tile_id, image_path, label_path, None, part=folder if folder in OFFICIAL_PARTS else None))

    return with_problems(TileSource(name, VAIHINGEN_CLASSES, tiles, read_image=read_rgb,
                                    read_label=_read_mmseg_label), problems)


# Stored value v → class v-1; 0 marks the eroded boundary (mmseg's reduce_zero_label).
_MMSEG_LOOKUP = np.full(256, 254, dtype=np.uint8)
_MMSEG_LOOKUP[0] = IGNORE_INDEX
_MMSEG_LOOKUP[1:7] = np.arange(6, dtype=np.uint8)


def _read_mmseg_label(path: Path) -> np.ndarray:
    stored = read_index_png(path)
    indices = _MMSEG_LOOKUP[stored]
    bad = indices == 254
    if bad.any():
        ys, xs = np.nonzero(bad)
        raise DatasetError(f"{path}: value {int(stored[ys[0], xs[0]])} at pixel (x={xs[0]}, y={ys[0]}) is not "
                           f"0 (ignore) or 1..6 (impervious..clutter)")
    return indices
