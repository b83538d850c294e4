"""Any dataset laid out as an image folder and a mask folder paired by file stem::

    root/<image_dir>/<stem>.<png|jpg|jpeg|tif|tiff>
    root/<mask_dir>/<stem><mask_stem_suffix>.<png|tif|tiff|bmp>

or one such pair of folders per official part, named by a `{part}` placeholder
(`image_dir="{part}/images"`, `mask_dir="{part}/masks"`).

Masks are either class indices stored as pixel values (`mask_format="index"`, palette or grey
PNGs) or colour-coded RGB (`mask_format="colour"`, decoded with `palette`).
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from wsseg.datasets.base import (IGNORE_INDEX, OFFICIAL_PARTS, ClassSpec, DataProblem, DatasetError, Tile,
                                 TileSource, check_unique_ids, missing_file_problem, with_problems)
from wsseg.datasets.colour import check_indices, decode_colour_mask, default_palette, read_index_png, read_rgb, size_problem

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
PART = "{part}"


def natural_key(text: str):
    """Sort key putting "img2" before "img10"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def folder_source(root: str | Path, image_dir: str, mask_dir: str, class_names: Sequence[str],
                  palette: Sequence[tuple[int, int, int]] | None = None, mask_format: str = "index",
                  in_mean: Sequence[str] | None = None, ignore_index: int = IGNORE_INDEX,
                  image_suffixes: Sequence[str] = IMAGE_SUFFIXES, *, mask_stem_suffix: str = "",
                  ignore_colours: Sequence[tuple[int, int, int]] = (), colour_tolerance: float = 0.0,
                  parts: Sequence[str] | None = None, prefix_part: bool = True, name: str = "folder",
                  check_sizes: bool = True, masks_optional: bool = False) -> TileSource:
    """Tiles named by image stem, in natural order; every image must have its mask.

    With `{part}` in `image_dir` (and usually `mask_dir`), e.g. "img_dir/{part}" and
    "ann_dir/{part}", every part of `parts` is read (default: those of train, val, test that
    exist), each tile knowing its part; images of a "test" part may lack masks. Ids are then
    "<part>_<stem>", since parts often reuse file names; `prefix_part=False` keeps bare stems
    (an error if two parts share one). Images without a mask, or of another size than theirs, are
    all reported in one DataProblemsError.

    `masks_optional`: images without a mask are listed, unlabelled (the tagged images of
    `weak.tags_file`, say); otherwise a missing mask is a problem.
    """
    if mask_format not in ("index", "colour"):
        raise DatasetError(f"mask_format must be 'index' or 'colour', got {mask_format!r}")
    if mask_format == "colour" and palette is None:
        raise DatasetError("mask_format='colour' needs the palette that the masks use")
    class_names = tuple(class_names)
    palette = tuple(tuple(int(v) for v in c) for c in palette) if palette is not None else default_palette(len(class_names))
    # `ignore_index` is the value the stored masks use; labels always come out with 255 (the
    # contract every consumer relies on).
    if ignore_index < len(class_names) or ignore_index > 255:
        raise DatasetError(f"ignore_index {ignore_index} collides with class indices 0..{len(class_names) - 1} "
                           f"or does not fit in uint8")
    classes = ClassSpec(class_names, palette, tuple(in_mean or ()))

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root folder not found")
    suffixes = {s.lower() if s.startswith(".") else f".{s.lower()}" for s in image_suffixes}
    problems: list[DataProblem] = []
    if PART in image_dir:
        if parts is None:
            parts = [part for part in OFFICIAL_PARTS if (root / image_dir.replace(PART, part)).is_dir()]
            if not parts:
                raise DatasetError(f"{root}: no {image_dir} folder for any of the parts {', '.join(OFFICIAL_PARTS)}")
        unknown = [part for part in parts if part not in OFFICIAL_PARTS]
        if unknown:
            raise DatasetError(f"parts {unknown} are not among {', '.join(OFFICIAL_PARTS)}")
        tiles = []
        for part in parts:
            tiles += _folder_tiles(root, image_dir.replace(PART, part), mask_dir.replace(PART, part), suffixes,
                                   mask_stem_suffix, check_sizes, problems, part,
                                   id_prefix=f"{part}_" if prefix_part else "", masks_optional=masks_optional)
        tiles = check_unique_ids(tiles)
    elif parts is not None:
        raise DatasetError(f"parts={list(parts)} needs {PART} in image_dir (e.g. 'images/{PART}'), got {image_dir!r}")
    else:
        tiles = _folder_tiles(root, image_dir, mask_dir, suffixes, mask_stem_suffix, check_sizes, problems,
                              masks_optional=masks_optional)

    if mask_format == "colour":
        read_label = partial(_read_colour_label, palette=palette, ignore_colours=tuple(map(tuple, ignore_colours)),
                             tolerance=colour_tolerance)
    else:
        read_label = partial(_read_index_label, num_classes=len(class_names), stored_ignore=ignore_index)
    return with_problems(TileSource(name, classes, tiles, read_image=read_rgb, read_label=read_label), problems)


def _folder_tiles(root: Path, image_dir: str, mask_dir: str, suffixes: set[str], mask_stem_suffix: str,
                  check_sizes: bool, problems: list[DataProblem], part: str | None = None,
                  id_prefix: str = "", masks_optional: bool = False) -> list[Tile]:
    """The tiles of one image folder; an image without a mask, or of another size, goes to `problems`."""
    # Official test parts often ship without ground truth: their images are listed, unlabelled.
    masks_optional = masks_optional or part == "test"
    images, masks = root / image_dir, root / mask_dir
    for folder, what in ((images, "image"), (masks, "mask")):
        if not folder.is_dir() and not (what == "mask" and masks_optional):
            raise DatasetError(f"{folder}: {what} folder not found (root {root})")
    image_paths = sorted((p for p in images.iterdir() if p.is_file() and p.suffix.lower() in suffixes),
                         key=lambda p: natural_key(p.name))
    if not image_paths:
        raise DatasetError(f"{images}: no images with suffix {sorted(suffixes)}")
    mask_by_stem: dict[str, Path] = {}
    for p in masks.iterdir() if masks.is_dir() else ():
        if p.is_file() and p.suffix.lower() in MASK_SUFFIXES and p.stem.endswith(mask_stem_suffix):
            stem = p.stem[: len(p.stem) - len(mask_stem_suffix)] if mask_stem_suffix else p.stem
            if stem in mask_by_stem:
                raise DatasetError(f"{p}: two masks for stem {stem!r} (also {mask_by_stem[stem]})")
            mask_by_stem[stem] = p

    tiles, seen = [], {}
    for image_path in image_paths:
        stem = image_path.stem
        if stem in seen:
            raise DatasetError(f"{image_path}: two images with stem {stem!r} (also {seen[stem]})")
        seen[stem] = image_path
        mask_path, tile_id = mask_by_stem.get(stem), id_prefix + stem
        if mask_path is None and not masks_optional:
            problems.append(missing_file_problem(tile_id, image_path, masks / f"{stem}{mask_stem_suffix}"
                                                 f"{{{','.join(MASK_SUFFIXES)}}}", "mask"))
            continue
        if check_sizes and mask_path is not None and (problem := size_problem(tile_id, image_path, mask_path)):
            problems.append(problem)
            continue
        tiles.append(Tile(tile_id, image_path, mask_path, None, part=part))
    return tiles


def _read_colour_label(path: Path, palette, ignore_colours, tolerance: float) -> np.ndarray:
    return decode_colour_mask(read_rgb(path), palette, path, ignore_colours=ignore_colours, tolerance=tolerance)


def _read_index_label(path: Path, num_classes: int, stored_ignore: int) -> np.ndarray:
    indices = read_index_png(path)
    if stored_ignore != IGNORE_INDEX:
        indices = np.where(indices == stored_ignore, np.uint8(IGNORE_INDEX), indices)
    return check_indices(indices, num_classes, path)
