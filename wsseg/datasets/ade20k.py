"""ADE20K, in the two layouts users have.

Challenge (SceneParsing / ADEChallengeData2016), 150 classes::

    ADEChallengeData2016/images/{training,validation}/ADE_*_<n>.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*_<n>.png    0 = other, k = class k

0 ("other") becomes ignore and k becomes k-1 (mmseg's reduce_zero_label).

Full format (ADE20K_2021_17_01), over the whole ~3.6k-name vocabulary::

    images/ADE/{training,validation}/<scene folders>/ADE_*_<n>.jpg, ..._seg.png, ....json

where a pixel's full class index is R/10·256 + G of `_seg.png` (0 = unlabelled) and B encodes
instances. The same index is each whole object's `name_ndx` in the image's JSON. A training set
needs a fixed, small class list, so `ade20k_full_source` takes the classes as
{name: [full indices]}; every other index is ignored.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from wsseg.datasets.base import (IGNORE_INDEX, ClassSpec, DataOptionError, DataProblem, DatasetError, Tile, TileSource,
                                 check_unique_ids, with_problems)
from wsseg.datasets.colour import default_palette
from wsseg.datasets.folder import natural_key
from wsseg.datasets.image_files import pair_problem, read_array, read_index_png, read_rgb

ADE20K_150_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
ADE20K_CLASSES = ClassSpec(names=ADE20K_150_NAMES, palette=default_palette(len(ADE20K_150_NAMES)))

_CHALLENGE_LOOKUP = np.full(256, 254, dtype=np.uint8)
_CHALLENGE_LOOKUP[0] = IGNORE_INDEX
_CHALLENGE_LOOKUP[1:151] = np.arange(150, dtype=np.uint8)


# Folder name → official part; the test images (release_test) ship apart, without annotations.
CHALLENGE_PARTS = {"training": "train", "validation": "val"}


def ade20k_challenge_source(root: str | Path, split: str | None = None, check_sizes: bool = True) -> TileSource:
    """`root` is ADEChallengeData2016 or its parent; ids are the image stems (ADE_train_*, ADE_val_*).

    `split` reads one part ("training" or "validation", also "train" / "val"); None reads every
    part present, each tile knowing its part.
    """
    root = Path(root)
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    if split is None:
        folders = [name for name in CHALLENGE_PARTS if (root / "images" / name).is_dir()]
        if not folders:
            raise DatasetError(f"{root}: no images/training or images/validation folder (ADE20K challenge layout)")
    else:
        by_part = {part: name for name, part in CHALLENGE_PARTS.items()}
        folders = [by_part.get(split, split)]
    tiles, problems = [], []
    for folder in folders:
        tiles += _challenge_tiles(root, folder, check_sizes, problems)
    return with_problems(TileSource("ade20k", ADE20K_CLASSES, check_unique_ids(tiles), read_image=read_rgb,
                                    read_label=_read_challenge_label), problems)


def _challenge_tiles(root: Path, folder: str, check_sizes: bool, problems: list[DataProblem]) -> list[Tile]:
    """The tiles of one part; an image without its annotation, or of another size, goes to `problems`."""
    images, labels = root / "images" / folder, root / "annotations" / folder
    for path in (images, labels):
        if not path.is_dir():
            raise DatasetError(f"{path}: folder not found (ADE20K challenge layout, split {folder!r})")
    image_paths = sorted(images.glob("*.jpg"), key=lambda p: natural_key(p.name))
    if not image_paths:
        raise DatasetError(f"{images}: no .jpg images")
    tiles = []
    for image_path in image_paths:
        label_path = labels / f"{image_path.stem}.png"
        if problem := pair_problem(image_path.stem, image_path, label_path, "annotation", check_sizes):
            problems.append(problem)
            continue
        tiles.append(Tile(image_path.stem, image_path, label_path, None, part=CHALLENGE_PARTS.get(folder)))
    return tiles


def _read_challenge_label(path: Path) -> np.ndarray:
    stored = read_index_png(path)
    indices = _CHALLENGE_LOOKUP[stored]
    if (indices == 254).any():
        ys, xs = np.nonzero(indices == 254)
        raise DatasetError(f"{path}: value {int(stored[ys[0], xs[0]])} at pixel (x={xs[0]}, y={ys[0]}) is above 150")
    return indices


def decode_ade_full(seg_rgb: np.ndarray) -> np.ndarray:
    """Full-format `_seg.png` (H×W×3) → int32 full-vocabulary class index (0 = unlabelled)."""
    seg = seg_rgb.astype(np.int32)
    return seg[..., 0] // 10 * 256 + seg[..., 1]


def ade_object_names(json_path: str | Path) -> dict[int, str]:
    """Full class index → name of the whole objects annotated in one image's JSON."""
    path = Path(json_path)
    try:
        annotation = json.loads(path.read_bytes().decode("utf-8"))["annotation"]
    except (OSError, ValueError, KeyError) as error:
        raise DatasetError(f"{path}: not an ADE20K annotation JSON ({error})") from error
    return {int(o["name_ndx"]): o["name"] for o in annotation.get("object", [])
            if o.get("parts", {}).get("part_level", 0) == 0}


def ade20k_full_source(root: str | Path, classes: Mapping[str, Sequence[int]] | None = None,
                       check_sizes: bool = True) -> TileSource:
    """Full-format images under `root` (searched recursively for `*_seg.png`), with the given classes.

    `classes` maps each class name to the full indices it gathers, e.g. {"car": [401],
    "person": [1831]}; pixels of any other index are ignored.
    """
    if not classes:
        raise DataOptionError("data.options.classes: ade20k_full needs classes={name: [full class indices]} "
                              "(see ade_object_names)")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: ADE20K root folder not found")
    names = tuple(classes)
    if len(names) >= IGNORE_INDEX:
        raise DataOptionError(f"data.options.classes: ade20k_full's {len(names)} classes do not fit in uint8 labels")
    table: dict[int, int] = {}
    for k, name in enumerate(names):
        for full_index in classes[name]:
            if int(full_index) in table:
                raise DataOptionError(f"data.options.classes: full index {full_index} given to both "
                                   f"{names[table[int(full_index)]]!r} and {name!r}")
            table[int(full_index)] = k
    seg_paths = sorted(root.rglob("*_seg.png"), key=lambda p: natural_key(p.name))
    if not seg_paths:
        raise DatasetError(f"{root}: no *_seg.png files (ADE20K full format)")
    tiles, problems = [], []
    for seg_path in seg_paths:
        stem = seg_path.name[: -len("_seg.png")]
        image_path = seg_path.with_name(f"{stem}.jpg")
        if problem := pair_problem(stem, seg_path, image_path, "image", check_sizes, image_path=image_path):
            problems.append(problem)
            continue
        part = next((CHALLENGE_PARTS[p] for p in seg_path.relative_to(root).parts if p in CHALLENGE_PARTS), None)
        tiles.append(Tile(stem, image_path, seg_path, None, part=part))
    spec = ClassSpec(names, default_palette(len(names)))
    keys = np.array(sorted(table), dtype=np.int64)
    values = np.array([table[k] for k in sorted(table)], dtype=np.uint8)
    return with_problems(TileSource("ade20k_full", spec, check_unique_ids(tiles), read_image=read_rgb,
                                    read_label=partial(_read_full_label, keys=keys, values=values)), problems)


def _read_full_label(path: Path, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    stored = read_array(path)
    if stored.ndim != 3 or stored.shape[2] < 3 or stored.dtype != np.uint8:
        raise DatasetError(f"{path}: expected an 8-bit RGB _seg.png, found shape {stored.shape} {stored.dtype}")
    full = decode_ade_full(stored[..., :3])
    position = np.clip(np.searchsorted(keys, full), 0, len(keys) - 1)
    return np.where(keys[position] == full, values[position], np.uint8(IGNORE_INDEX)).astype(np.uint8)
