"""A user's tags file: real image- or box-level weak labels for the N2 images, in CSV or JSON.

Tags computed from masks (`datasets.tags`) are for experiments; a tagged collection comes with
its own labels. Here they are read and checked against the dataset, each problem an error that
names the file, the line or key and the value.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from wsseg.datasets.base import DatasetError, TileSource
from wsseg.datasets.image_files import image_size
from wsseg.datasets.tags import CropTag


USER_TAG_SEPARATOR = ";"


def read_user_tags(path: str | Path, source: TileSource, mode: str, scale: float = 1.0) -> dict[str, list[CropTag]]:
    """The weak labels of a user's file, per tile id: real image- or box-level tags, not computed
    from masks. Images are named by tile id, file name or file stem.

    CSV: a header with `image` and `classes` (class names joined by ";"), and for box tags also
    `y`, `x`, `h`, `w` in the image's pixels. JSON: {image: [class, ...]} for image tags, or
    {image: [{"box": [y, x, h, w], "classes": [...]}, ...]} for box tags. `mode` is `weak.tags`:
    "image" needs image tags, "grid" box tags. `scale` is `data.scale`: boxes and images are
    scaled as the images are. Errors name the file, the line or key, and the value."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"weak.tags_file {path}: file not found")
    entries = _user_tag_entries(path)
    lookup = _tile_lookup(source, path)
    names = source.classes.names
    tags: dict[str, list[CropTag]] = {}
    for where, image, box, class_names in entries:
        if image not in lookup:
            raise DatasetError(f"{where}: image {image!r} is not in the dataset {source.name!r} (named by tile id, file "
                               f"name or stem, e.g. {source.tiles[0].image_path.name!r})")
        tile_id = lookup[image]
        unknown = [c for c in class_names if c not in names]
        if unknown:
            raise DatasetError(f"{where}: class {unknown[0]!r} is not a class of {source.name!r} ({', '.join(names)})")
        if not class_names:
            raise DatasetError(f"{where}: image {image!r} has no class tag")
        if (box is None) != (mode == "image"):
            raise DatasetError(f"{where}: {'a box tag' if box is not None else 'an image tag'}, but weak.tags is "
                               f"{mode!r}: image tags need weak.tags: image, box tags weak.tags: grid")
        height, width = _scaled_size(source.tile(tile_id).image_path, scale)
        if box is None:
            if tile_id in tags:
                raise DatasetError(f"{where}: image {image!r} is tagged twice")
            y, x, h, w = 0, 0, height, width
        else:
            y, x, h, w = (round(v * scale) for v in box)
            if min(box) < 0 or box[2] <= 0 or box[3] <= 0 or y + h > height + 1 or x + w > width + 1:
                raise DatasetError(f"{where}: box (y, x, h, w) = {tuple(box)} is not inside image {image!r} "
                                   f"({height}×{width} at data.scale {scale:g})")
            h, w = min(h, height - y), min(w, width - x)
        classes = tuple(sorted({names.index(c) for c in class_names}))
        tags.setdefault(tile_id, []).append(CropTag(tile_id, y, x, h, w, classes))
    return tags


def _user_tag_entries(path: Path) -> list[tuple[str, str, tuple[int, int, int, int] | None, list[str]]]:
    """(where, image, box or None, class names) of every entry of a CSV or JSON tags file."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
            fields = set(rows[0]) if rows else set()
        if not {"image", "classes"} <= fields:
            raise DatasetError(f"{path}: a tags CSV needs the columns image and classes (and y, x, h, w for boxes), "
                               f"found {sorted(fields)}")
        has_box = {"y", "x", "h", "w"} <= fields
        entries = []
        for line, row in enumerate(rows, start=2):
            where = f"{path}:{line}"
            box = None
            if has_box:
                try:
                    box = tuple(int(row[k]) for k in ("y", "x", "h", "w"))
                except (TypeError, ValueError):
                    raise DatasetError(f"{where}: y, x, h, w must be whole pixel numbers, got "
                                       f"{[row[k] for k in ('y', 'x', 'h', 'w')]}") from None
            classes = [c.strip() for c in (row["classes"] or "").split(USER_TAG_SEPARATOR) if c.strip()]
            entries.append((where, row["image"].strip(), box, classes))
        return entries
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DatasetError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{path}: a tags JSON maps image → [classes] or image → [{{box, classes}}]")
        entries = []
        for image, value in data.items():
            where = f"{path}, key {image!r}"
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                entries.append((where, image, None, list(value)))
                continue
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise DatasetError(f"{where}: expected a list of class names or of {{\"box\": [y, x, h, w], "
                                   f"\"classes\": [...]}}, got {str(value)[:60]}")
            for n, item in enumerate(value):
                box, classes = item.get("box"), item.get("classes")
                if (not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, int) for v in box)
                        or not isinstance(classes, list)):
                    raise DatasetError(f"{where}, item {n}: expected {{\"box\": [y, x, h, w], \"classes\": [...]}}, "
                                       f"got {item}")
                entries.append((f"{where}, item {n}", image, tuple(box), list(classes)))
        return entries
    raise DatasetError(f"{path}: a tags file is .csv or .json, not {path.suffix!r}")


def _tile_lookup(source: TileSource, path: Path) -> dict[str, str]:
    lookup: dict[str, str] = {}
    for tile in source.tiles:
        for key in {tile.tile_id, tile.image_path.name, tile.image_path.stem}:
            if lookup.get(key, tile.tile_id) != tile.tile_id:
                lookup[key] = ""  # two tiles answer to it: only an unambiguous name may be used
            else:
                lookup[key] = tile.tile_id
    ambiguous = [k for k, v in lookup.items() if not v]
    for key in ambiguous:
        del lookup[key]
    return lookup


def _scaled_size(image_path: Path, scale: float) -> tuple[int, int]:
    height, width = image_size(image_path)
    return (height, width) if scale == 1.0 else (max(1, round(height * scale)), max(1, round(width * scale)))
