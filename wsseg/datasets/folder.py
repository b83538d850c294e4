"""Any dataset laid out as an image folder and a mask folder paired by file stem::

    root/<image_dir>/<stem>.<png|jpg|jpeg|tif|tiff>
    root/<mask_dir>/<stem><mask_stem_suffix>.<png|tif|tiff|bmp>

Official parts come either from one such pair of folders per part, named by a `{part}`
placeholder (`image_dir="{part}/images"`, `mask_dir="{part}/masks"`), or from the list files the
dataset ships (`split_files={"train": "splits/train.txt", "val": "splits/val.txt"}`), as
MMSegmentation's `ann_file` reads them.

Masks are either class indices stored as pixel values (`mask_format="index"`, palette or grey
PNGs) or colour-coded RGB (`mask_format="colour"`, decoded with `palette`; an alpha band is
dropped).
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from wsseg.datasets.base import (IGNORE_INDEX, OFFICIAL_PARTS, ClassSpec, DataOptionError, DataProblem, DatasetError,
                                 Tile, TileSource, check_unique_ids, missing_file_problem, with_problems)
from wsseg.datasets.colour import check_indices, decode_colour_mask, default_palette
from wsseg.datasets.image_files import read_index_png, read_rgb, size_problem
from wsseg.datasets.split_lists import check_split_files, listed_parts

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
PART = "{part}"
# The option of `data.kind: folder` that sets the stored ignore value, named in mask errors.
IGNORE_KEY = "data.options.ignore_index"


def natural_key(text: str):
    """Sort key putting "img2" before "img10"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def folder_source(root: str | Path, image_dir: str, mask_dir: str, class_names: Sequence[str],
                  palette: Sequence[tuple[int, int, int]] | None = None, mask_format: str = "index",
                  in_mean: Sequence[str] | None = None, ignore_index: int = IGNORE_INDEX,
                  image_suffixes: Sequence[str] = IMAGE_SUFFIXES, *, mask_stem_suffix: str = "",
                  ignore_colours: Sequence[tuple[int, int, int]] = (), colour_tolerance: float = 0.0,
                  parts: Sequence[str] | None = None, split_files: Mapping[str, str] | None = None,
                  prefix_part: bool = True, name: str = "folder", check_sizes: bool = True,
                  masks_optional: bool = False) -> TileSource:
    """Tiles named by image stem, in natural order; every image must have its mask.

    With `{part}` in `image_dir` (and usually `mask_dir`), e.g. "img_dir/{part}" and
    "ann_dir/{part}", every part of `parts` is read (default: those of train, val, test that
    exist), each tile knowing its part; images of a "test" part may lack masks. Ids are then
    "<part>_<stem>", since parts often reuse file names; `prefix_part=False` keeps bare stems
    (an error if two parts share one).

    With `split_files` (part → list file relative to `root`), the tiles are the images the lists
    name, each in its list's part (`parts` picks some of the lists), ids their bare stems; a line
    is a stem, a file name or a path relative to `root` (`images/x.jpg`). A line naming no image
    is a problem naming the list file and line.

    `ignore_index` is the value the stored index masks use for unlabelled pixels (Stanford
    Background's PNGs: 15); labels come out with 255 there. Images without a mask, or of another
    size than theirs, are all reported in one DataProblemsError.

    `masks_optional`: images without a mask are listed, unlabelled (the tagged images of
    `weak.tags_file`, say); otherwise a missing mask is a problem.
    """
    return paired_folder_source(
        root, image_dir, mask_dir, class_names, palette, mask_format, in_mean, ignore_index, image_suffixes,
        mask_stem_suffix=mask_stem_suffix, ignore_colours=ignore_colours, colour_tolerance=colour_tolerance,
        parts=parts, split_files=split_files, prefix_part=prefix_part, name=name, check_sizes=check_sizes,
        masks_optional=masks_optional, ignore_key=IGNORE_KEY)


def paired_folder_source(root: str | Path, image_dir: str, mask_dir: str, class_names: Sequence[str],
                         palette: Sequence[tuple[int, int, int]] | None = None, mask_format: str = "index",
                         in_mean: Sequence[str] | None = None, ignore_index: int = IGNORE_INDEX,
                         image_suffixes: Sequence[str] = IMAGE_SUFFIXES, *, mask_stem_suffix: str = "",
                         ignore_colours: Sequence[tuple[int, int, int]] = (), colour_tolerance: float = 0.0,
                         parts: Sequence[str] | None = None, split_files: Mapping[str, str] | None = None,
                         prefix_part: bool = True, name: str = "folder", check_sizes: bool = True,
                         masks_optional: bool = False, ignore_key: str | None = None,
                         display_palette: Sequence[tuple[int, int, int]] | None = None) -> TileSource:
    """`folder_source` for loaders of named layouts built on it (CamVid, Stanford Background,
    LabelMeFacade), whose ignore value is their own, not an option: `ignore_key` names the option
    that sets it, where a user sets it (None: none does). `display_palette`: the colours the
    classes are drawn in, where they differ from the colours that code the masks (`palette`)."""
    image_dir, mask_dir = _folder(image_dir, "data.options.image_dir"), _folder(mask_dir, "data.options.mask_dir")
    if mask_format not in ("index", "colour"):
        raise DataOptionError(f"data.options.mask_format must be 'index' or 'colour', got {mask_format!r}")
    if mask_format == "colour" and palette is None:
        raise DataOptionError("data.options.mask_format 'colour' needs the palette that the masks use "
                              "(data.options.palette: one [r, g, b] per class, in class order)")
    class_names = _names(class_names, "data.options.class_names")
    palette = _palette(palette, len(class_names)) if palette is not None else default_palette(len(class_names))
    # `ignore_index` is the value the stored masks use; labels always come out with 255 (the
    # contract every consumer relies on).
    if ignore_index < len(class_names) or ignore_index > 255:
        raise DataOptionError(f"{ignore_key or 'ignore_index'} {ignore_index} collides with class indices "
                              f"0..{len(class_names) - 1} or does not fit in uint8")
    in_mean = _names(in_mean or (), "data.options.in_mean")
    if unknown := [n for n in in_mean if n not in class_names]:
        raise DataOptionError(f"data.options.in_mean names {unknown}, which data.options.class_names does not "
                              f"({', '.join(class_names)})")
    classes = ClassSpec(class_names, tuple(display_palette or palette), in_mean)
    if isinstance(image_suffixes, str):
        image_suffixes = [image_suffixes]
    # One part named alone is a part, not the letters of its name.
    if isinstance(parts, str):
        parts = [parts]
    if split_files is not None:
        split_files = check_split_files(split_files)

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root folder not found")
    suffixes = {s.lower() if s.startswith(".") else f".{s.lower()}" for s in image_suffixes}
    problems: list[DataProblem] = []
    if PART in image_dir:
        if split_files is not None:
            raise DataOptionError(f"data.options.split_files and {PART} in data.options.image_dir ({image_dir!r}) "
                                  f"both give the parts: keep one")
        if parts is None:
            parts = [part for part in OFFICIAL_PARTS if (root / image_dir.replace(PART, part)).is_dir()]
            if not parts:
                raise DatasetError(f"{root}: no {image_dir} folder for any of the parts {', '.join(OFFICIAL_PARTS)}")
        _check_parts(parts, OFFICIAL_PARTS)
        tiles = []
        for part in parts:
            tiles += _folder_tiles(root, image_dir.replace(PART, part), mask_dir.replace(PART, part), suffixes,
                                   mask_stem_suffix, check_sizes, problems, part,
                                   id_prefix=f"{part}_" if prefix_part else "", masks_optional=masks_optional)
        tiles = check_unique_ids(tiles)
    elif split_files is not None:
        if parts is not None:
            _check_parts(parts, tuple(split_files))
            split_files = {part: split_files[part] for part in parts}
        tiles = _folder_tiles(root, image_dir, mask_dir, suffixes, mask_stem_suffix, check_sizes, problems,
                              masks_optional=masks_optional, split_files=split_files)
    elif parts is not None:
        raise DataOptionError(f"data.options.parts {list(parts)} reads one folder pair per part and needs {PART} in "
                              f"image_dir (e.g. 'images/{PART}'), got {image_dir!r}; for parts from the dataset's "
                              f"list files, set data.options.split_files, e.g. "
                              f"{{train: splits/train.txt, val: splits/val.txt}}")
    else:
        tiles = _folder_tiles(root, image_dir, mask_dir, suffixes, mask_stem_suffix, check_sizes, problems,
                              masks_optional=masks_optional)

    if mask_format == "colour":
        read_label = partial(_read_colour_label, palette=palette, ignore_colours=tuple(map(tuple, ignore_colours)),
                             tolerance=colour_tolerance)
    else:
        read_label = partial(_read_index_label, num_classes=len(class_names), stored_ignore=ignore_index,
                             ignore_key=ignore_key)
    return with_problems(TileSource(name, classes, tiles, read_image=read_rgb, read_label=read_label), problems)


def _names(values, key: str) -> tuple[str, ...]:
    """A list of names; a lone string is an error naming `key` (iterating it would give its letters)."""
    if isinstance(values, str):
        raise DataOptionError(f"{key} must be a list of names, e.g. [{values}], got the string {values!r}")
    return tuple(values)


def _folder(value, key: str) -> str:
    """A folder name under the root. YAML reads an unquoted `{part}` as a mapping, which would
    otherwise fail later as a path that is no text."""
    if not isinstance(value, (str, Path)):
        raise DataOptionError(f"{key} must be a folder name under data.root, got {value!r}; quote a name that "
                              f"starts with {{, as in '{{part}}/images'")
    return str(value)


def _palette(palette, num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """`data.options.palette` as RGB triples, one per class: a colour short or extra would shift
    every class after it, in the masks decoded and in the figures."""
    colours = []
    for colour in palette:
        try:
            rgb = tuple(int(v) for v in colour)
        except (TypeError, ValueError):
            rgb = ()
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise DataOptionError(f"data.options.palette: {colour!r} is no [r, g, b] colour of values 0..255")
        colours.append(rgb)
    if len(colours) != num_classes:
        raise DataOptionError(f"data.options.palette has {len(colours)} colours for the {num_classes} classes of "
                              f"data.options.class_names: give one [r, g, b] per class, in class order")
    return tuple(colours)


def _check_parts(parts: Sequence[str], known: Sequence[str]) -> None:
    unknown = [part for part in parts if part not in known]
    if unknown:
        where = ("the parts of data.options.split_files" if tuple(known) != OFFICIAL_PARTS else
                 "the official parts; for parts from the dataset's list files set data.options.split_files")
        raise DataOptionError(f"data.options.parts {unknown} are not among {', '.join(known)} ({where})")


def _folder_tiles(root: Path, image_dir: str, mask_dir: str, suffixes: set[str], mask_stem_suffix: str,
                  check_sizes: bool, problems: list[DataProblem], part: str | None = None,
                  id_prefix: str = "", masks_optional: bool = False,
                  split_files: Mapping[str, str] | None = None) -> list[Tile]:
    """The tiles of one image folder; an image without a mask, or of another size, goes to
    `problems`. With `split_files`, only the images the lists name, each of its list's part."""
    images, masks = root / image_dir, root / mask_dir
    # Official test parts often ship without ground truth: their images are listed, unlabelled.
    test_only = part == "test" or (split_files is not None and set(split_files) == {"test"})
    for folder, what in ((images, "image"), (masks, "mask")):
        if not folder.is_dir() and not (what == "mask" and (masks_optional or test_only)):
            raise DatasetError(f"{folder}: {what} folder not found (root {root})")
    # Filtered on suffix: image folders also hold file lists and editor backups (LabelMeFacade's
    # images/filelist.txt and filelist.txt~).
    image_paths = sorted((p for p in images.iterdir() if p.is_file() and p.suffix.lower() in suffixes),
                         key=lambda p: natural_key(p.name))
    if not image_paths:
        raise DatasetError(f"{images}: no images with suffix {sorted(suffixes)}")
    image_by_stem: dict[str, Path] = {}
    for image_path in image_paths:
        if image_path.stem in image_by_stem:
            raise DatasetError(f"{image_path}: two images with stem {image_path.stem!r} "
                               f"(also {image_by_stem[image_path.stem]})")
        image_by_stem[image_path.stem] = image_path
    part_of = (listed_parts(root, split_files, images, image_by_stem, suffixes, problems)
               if split_files is not None else None)
    mask_by_stem: dict[str, Path] = {}
    for p in masks.iterdir() if masks.is_dir() else ():
        if p.is_file() and p.suffix.lower() in MASK_SUFFIXES and p.stem.endswith(mask_stem_suffix):
            stem = p.stem[: len(p.stem) - len(mask_stem_suffix)] if mask_stem_suffix else p.stem
            if stem in mask_by_stem:
                raise DatasetError(f"{p}: two masks for stem {stem!r} (also {mask_by_stem[stem]})")
            mask_by_stem[stem] = p

    tiles = []
    for stem, image_path in image_by_stem.items():
        if part_of is not None and stem not in part_of:
            continue
        tile_part = part if part_of is None else part_of[stem]
        mask_path, tile_id = mask_by_stem.get(stem), id_prefix + stem
        if mask_path is None and not (masks_optional or tile_part == "test"):
            problems.append(missing_file_problem(tile_id, image_path, masks / f"{stem}{mask_stem_suffix}"
                                                 f"{{{','.join(MASK_SUFFIXES)}}}", "mask"))
            continue
        if check_sizes and mask_path is not None and (problem := size_problem(tile_id, image_path, mask_path)):
            problems.append(problem)
            continue
        tiles.append(Tile(tile_id, image_path, mask_path, None, part=tile_part))
    return tiles


def _read_colour_label(path: Path, palette, ignore_colours, tolerance: float) -> np.ndarray:
    return decode_colour_mask(read_rgb(path), palette, path, ignore_colours=ignore_colours, tolerance=tolerance)


def _read_index_label(path: Path, num_classes: int, stored_ignore: int, ignore_key: str | None) -> np.ndarray:
    # Checked as stored, so that the error shows the ignore value the masks are read with.
    indices = check_indices(read_index_png(path), num_classes, path, stored_ignore, ignore_key)
    if stored_ignore != IGNORE_INDEX:
        indices = np.where(indices == stored_ignore, np.uint8(IGNORE_INDEX), indices)
    return indices
