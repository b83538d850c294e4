"""Every problem of a dataset in one pass, before anything trains: `wsseg check-data` and training
both use these, so that a broken file among thousands is reported with all the others, naming it
and saying what to do, and not at the first one, or hours later inside a DataLoader worker.

Each function returns a list of `DataProblem`s and raises nothing for bad data. Pixels are read as
stored: an EXIF orientation is not applied (masks, PNG or TIFF, carry none, so image and mask stay
on one pixel grid), and an image that has one is a warning.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path


from wsseg.datasets.base import DataProblem, DatasetError, TileSource
from wsseg.datasets.image_files import UNREADABLE_FIX, image_header, size_problem, without_path
from wsseg.datasets.splits import Split
from wsseg.datasets.tags import load_crop_tags

MASK_FIX = ("correct or re-export the mask (its values must be the dataset's class colours or indices, or its "
            "ignore value), or remove its tile")
_BAND_NAMES = {1: "grey", 2: "grey + alpha", 3: "colour", 4: "colour + alpha, or a fourth band"}
_ORIENTATIONS = {2: "mirrored", 3: "turned 180°", 4: "flipped upside down", 5: "transposed", 6: "turned 90° clockwise",
                 7: "transversed", 8: "turned 90° anticlockwise"}


def _is_utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # a name of bytes that are not UTF-8, kept by Python as surrogate escapes
        return False
    return True


def check_tiles(source: TileSource, tile_ids: Iterable[str],
                progress: Callable[[list[str]], Iterable[str]] | None = None) -> list[DataProblem]:
    """Decode the image and every mask of each tile once and report all that is wrong.

    Per tile: a file name that is not UTF-8, an image or mask that does not decode (truncated,
    empty, not an image, not 8-bit), a mask value that is no class of the dataset (the decoders
    name the colour or index and the pixel), a mask of another size than its image, an EXIF
    orientation (a warning). Across tiles: an image whose band count differs from most images'.

    `progress` wraps the tile ids for display (the caller's progress bar: this bottom layer
    draws none itself, so that one place decides when bars are drawn).
    """
    tiles = {tile.tile_id: tile for tile in source.tiles}
    problems: list[DataProblem] = []
    bands: dict[str, tuple[Path, int]] = {}
    tile_ids = list(tile_ids)
    for tile_id in progress(tile_ids) if progress is not None else tile_ids:
        tile = tiles.get(tile_id)
        if tile is None:
            problems.append(DataProblem("split", f"tile {tile_id!r} is not in the dataset {source.name!r}",
                                        "restore its files, or leave it out of the split", tile_id))
            continue
        masks = [(eroded, path) for eroded, path in ((False, tile.label_path), (True, tile.eroded_label_path))
                 if path is not None]
        badly_named = [path for path in (tile.image_path, *(path for _, path in masks)) if not _is_utf8(path)]
        if badly_named:
            also = f" (nor that of {', '.join(map(str, badly_named[1:]))})" if len(badly_named) > 1 else ""
            problems.append(DataProblem(str(badly_named[0]), f"file name is not valid UTF-8{also}",
                                        "rename the file(s): tile ids and file names are written as text into "
                                        "split.json, logs and reports", tile_id))
        try:
            header = image_header(tile.image_path)
            image_hw = source.image(tile_id).shape[:2]
        except DatasetError as error:
            problems.append(DataProblem(str(tile.image_path), without_path(error, tile.image_path), UNREADABLE_FIX,
                                        tile_id))
            continue
        bands[tile_id] = (tile.image_path, header.bands)
        if header.orientation != 1:
            problems.append(DataProblem(
                str(tile.image_path),
                f"EXIF orientation {header.orientation} ({_ORIENTATIONS.get(header.orientation, 'unknown')} for "
                "display) is not applied: wsseg reads the pixels as stored, and its mask must match those",
                "nothing if the mask was drawn on the stored pixels; if on the turned view, save the image with "
                "its rotation applied (PIL.ImageOps.exif_transpose)", tile_id, blocking=False))
        for eroded, path in masks:
            try:
                label_hw = source.label(tile_id, eroded=eroded).shape[:2]
            except DatasetError as error:
                problems.append(DataProblem(str(path), without_path(error, path), MASK_FIX, tile_id))
                continue
            if label_hw != image_hw:
                # The headers' sizes, with their EXIF hint, unless only decoding tells them apart.
                problems.append(size_problem(tile_id, tile.image_path, path) or DataProblem(
                    str(path), f"mask decodes to {label_hw[0]}×{label_hw[1]} (H×W) but its image "
                    f"{tile.image_path} to {image_hw[0]}×{image_hw[1]}",
                    "give the image and its mask one size, or remove the tile", tile_id))
    return problems + _band_count_problems(bands)


def _band_count_problems(bands: dict[str, tuple[Path, int]]) -> list[DataProblem]:
    """Images whose band count differs from most images': a grey or RGBA file among RGB ones is
    read as RGB all the same (grey repeated, alpha dropped), which hides a file of another kind."""
    counts = Counter(count for _, count in bands.values())
    if len(counts) < 2:
        return []
    usual, usual_images = counts.most_common(1)[0]
    return [DataProblem(str(path), f"has {count} band(s) ({_BAND_NAMES.get(count, 'unusual')}), but {usual_images} "
                        f"of the {len(bands)} images have {usual} ({_BAND_NAMES.get(usual, 'unusual')})",
                        f"convert it to {usual} band(s) like the others, or remove its tile", tile_id)
            for tile_id, (path, count) in bands.items() if count != usual]


def check_split(split: Split, source: TileSource, where: str) -> list[DataProblem]:
    """Tiles a split names that the dataset lacks, or that have no ground truth although their
    part needs it (every part does: tags and scores both come from it). `where`: the split's file."""
    tiles = {tile.tile_id: tile for tile in source.tiles}
    problems = []
    for part in ("labelled", "tagged", "val", "test"):
        for tile_id in getattr(split, part):
            if tile_id not in tiles:
                problems.append(DataProblem(where, f"{part} tile {tile_id!r} is not in the dataset {source.name!r}",
                                            "restore the tile's files, or remove it from the split", tile_id))
            elif tiles[tile_id].label_path is None:
                problems.append(DataProblem(where, f"{part} tile {tile_id!r} has no ground truth",
                                            "add its mask, or remove it from the split", tile_id))
    return problems


def check_crop_tag_file(path: str | Path, source: TileSource) -> list[DataProblem]:
    """A crop tag file (a run's crop_tags.json) against the dataset: readable, made for its
    classes by name and order, naming only its tiles."""
    fix = "delete the file: training makes the tags again from the masks"
    try:
        tags = load_crop_tags(path, class_names=source.classes.names)
    except DatasetError as error:
        return [DataProblem(str(path), without_path(error, path), fix)]
    known = {tile.tile_id for tile in source.tiles}
    unknown = sorted({tag.tile_id for tag in tags} - known)
    return [DataProblem(str(path), f"tags tile {tile_id!r}, which is not in the dataset {source.name!r}", fix)
            for tile_id in unknown]
