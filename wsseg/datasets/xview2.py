"""xView2 / xBD building damage (Gupta et al., CVPR-W 2019), as the challenge ships it::

    root/<part>/images/<disaster>_<nnnnnnnn>_{pre,post}_disaster.png     1024×1024 RGB
    root/<part>/labels/<disaster>_<nnnnnnnn>_{pre,post}_disaster.json    buildings as WKT polygons

Each label file lists its buildings in `features.xy` (pixel coordinates) with
`properties.feature_type` "building" and, after the disaster, `properties.subtype`: no-damage,
minor-damage, major-damage, destroyed or un-classified. Parts are the folders present among
train, tier3, hold and test (tier3 is extra training data; hold is the challenge's validation).

Two targets, as the challenge scores them: `localisation` (pre-disaster images, background vs
building) and `damage` (post-disaster images, background and the four damage grades; an
un-classified building is ignored, since its grade is unknown). Masks are rasterised with
`polygons.rasterise`: a pixel belongs to a building when its centre lies inside the polygon.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import numpy as np

from wsseg.datasets.base import (IGNORE_INDEX, ClassSpec, DataOptionError, DatasetError, Tile, TileSource,
                                 check_unique_ids, missing_file_problem, with_problems)
from wsseg.datasets.image_files import image_size, read_rgb

LOCALISATION_CLASSES = ClassSpec(names=("background", "building"), palette=((0, 0, 0), (255, 255, 255)))
DAMAGE_GRADES = ("no-damage", "minor-damage", "major-damage", "destroyed")
DAMAGE_CLASSES = ClassSpec(names=("background", "no_damage", "minor_damage", "major_damage", "destroyed"),
                           palette=((0, 0, 0), (0, 200, 0), (250, 250, 0), (250, 130, 0), (220, 0, 0)))
UNCLASSIFIED = "un-classified"
PARTS = {"train": "train", "tier3": "train", "hold": "val", "test": "test"}
_IMAGE = re.compile(r"^(.+)_(pre|post)_disaster$")


def xview2_source(root: str | Path, target: str = "damage", parts: list[str] | None = None) -> TileSource:
    """Tiles "<part>_<disaster>_<n>" (the pre- or post-disaster image, after `target`)."""
    if target not in ("localisation", "damage"):
        raise DataOptionError(f"data.options.target must be 'localisation' or 'damage' (xview2), got {target!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: xView2 root folder not found")
    wanted = list(parts) if parts else [p for p in PARTS if (root / p / "images").is_dir()]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        raise DataOptionError(f"data.options.parts: xview2 parts {unknown} unknown; known: {', '.join(PARTS)}")
    if not wanted:
        raise DatasetError(f"{root}: no <part>/images folder for any of {', '.join(PARTS)} (the xView2 layout)")
    when = "pre" if target == "localisation" else "post"
    tiles, problems = [], []
    for part in wanted:
        images = root / part / "images"
        if not images.is_dir():
            raise DatasetError(f"{images}: folder not found")
        for image_path in sorted(images.glob(f"*_{when}_disaster.png")):
            tile_id = f"{part}_{_IMAGE.match(image_path.stem).group(1)}"
            label_path = root / part / "labels" / f"{image_path.stem}.json"
            if not label_path.is_file():
                if PARTS[part] != "test":
                    problems.append(missing_file_problem(tile_id, image_path, label_path, "label file"))
                    continue
                label_path = None
            tiles.append(Tile(tile_id, image_path, label_path, part=PARTS[part]))
    if not tiles and not problems:
        raise DatasetError(f"{root}: no *_{when}_disaster.png images in {', '.join(p + '/images' for p in wanted)}")
    classes = LOCALISATION_CLASSES if target == "localisation" else DAMAGE_CLASSES
    return with_problems(TileSource(f"xview2_{target}", classes, check_unique_ids(tiles), read_image=read_rgb,
                                    read_label=partial(read_building_mask, target=target)), problems)


def read_building_mask(path: Path, target: str = "damage") -> np.ndarray:
    """The label raster of one xView2 label file (`target` as in `xview2_source`)."""
    # Here, not at the top: rasterio and shapely load only for xView2 data, not with every import.
    from wsseg.datasets.polygons import rasterise, wkt_polygon

    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        buildings = record["features"]["xy"]
        meta = record.get("metadata", {})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{path}: not an xView2 label file ({type(err).__name__}: {err})") from None
    height, width = _size_of(path, meta)
    shapes = []
    for number, building in enumerate(buildings):
        properties = building.get("properties", {})
        if properties.get("feature_type", "building") != "building":
            continue
        polygon = wkt_polygon(building.get("wkt"), f"{path}, building {number}")
        if target == "localisation":
            shapes.append((polygon, 1))
            continue
        grade = properties.get("subtype")
        if grade == UNCLASSIFIED:
            shapes.append((polygon, IGNORE_INDEX))
        elif grade in DAMAGE_GRADES:
            shapes.append((polygon, 1 + DAMAGE_GRADES.index(grade)))
        else:
            raise DatasetError(f"{path}, building {number}: damage subtype {grade!r} is none of "
                               f"{', '.join(DAMAGE_GRADES + (UNCLASSIFIED,))} (a pre-disaster file as a damage label?)")
    return rasterise(shapes, (height, width))


def _size_of(label_path: Path, meta: dict) -> tuple[int, int]:
    if "height" in meta and "width" in meta:
        return int(meta["height"]), int(meta["width"])
    image = label_path.parent.parent / "images" / f"{label_path.stem}.png"
    if not image.is_file():
        raise DatasetError(f"{label_path}: no metadata width/height and no image {image} to take the size from")
    return image_size(image)
