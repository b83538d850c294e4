"""Cityscapes in its official layout::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        34 label ids
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   19 train ids, 255 ignore

Label ids are mapped to the 19 evaluation classes with the table of cityscapesScripts' labels.py.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from wsseg.datasets.base import (IGNORE_INDEX, OFFICIAL_PARTS, ClassSpec, DataOptionError, DataProblem, DatasetError,
                                 Tile, TileSource, check_unique_ids, with_problems)
from wsseg.datasets.colour import check_indices
from wsseg.datasets.folder import natural_key
from wsseg.datasets.image_files import pair_problem, read_index_png, read_rgb

CITYSCAPES_CLASSES = ClassSpec(
    names=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
    palette=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
             (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
             (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
)

# label id → train id; ids not listed (0–6, 9, 10, 14–16, 18, 29, 30, and -1 licence plate) are ignored.
LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                     26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
_LOOKUP = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label_id, _train_id in LABEL_TO_TRAIN_ID.items():
    _LOOKUP[_label_id] = _train_id

_SUFFIX = {"labelIds": "_gtFine_labelIds.png", "labelTrainIds": "_gtFine_labelTrainIds.png"}


def cityscapes_source(root: str | Path, split: str | None = None, label: str = "labelIds",
                      test_labels: bool = False, check_sizes: bool = True) -> TileSource:
    """Frames of every part present (or of `split` alone), ids "<city>_<seq>_<frame>", each tile
    knowing its part; `label` picks labelIds (mapped) or labelTrainIds.

    Test frames are listed without labels unless `test_labels=True`: the public gtFine/test files
    are placeholders that label only the ego vehicle and the rectification border (the benchmark
    keeps the real ones), so scoring on them would measure nothing. Pass it for a copy that
    holds real test ground truth.
    """
    if label not in _SUFFIX:
        raise DataOptionError(f"data.options.label: cityscapes label must be one of {sorted(_SUFFIX)}, got {label!r}")
    root = Path(root)
    if split is None:
        parts = [part for part in OFFICIAL_PARTS if (root / "leftImg8bit" / part).is_dir()]
        if not parts:
            raise DatasetError(f"{root}: no leftImg8bit/train, val or test folder (Cityscapes layout)")
    else:
        parts = [split]
    tiles, problems = [], []
    for part in parts:
        tiles += _frames(root, part, _SUFFIX[label], labelled=part != "test" or test_labels, check_sizes=check_sizes,
                         problems=problems)
    return with_problems(TileSource("cityscapes", CITYSCAPES_CLASSES, check_unique_ids(tiles), read_image=read_rgb,
                                    read_label=partial(_read_cityscapes_label, mapped=label == "labelIds")), problems)


def _frames(root: Path, part: str, suffix: str, labelled: bool, check_sizes: bool,
            problems: list[DataProblem]) -> list[Tile]:
    """The frames of one part; one without its ground truth, or of another size, goes to `problems`."""
    images, labels = root / "leftImg8bit" / part, root / "gtFine" / part
    for folder in (images, labels) if labelled else (images,):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: folder not found (root {root}, split {part!r})")
    image_paths = sorted(images.glob("*/*_leftImg8bit.png"), key=lambda p: natural_key(p.name))
    if not image_paths:
        raise DatasetError(f"{images}: no <city>/*_leftImg8bit.png images")
    tiles = []
    for image_path in image_paths:
        frame = image_path.name[: -len("_leftImg8bit.png")]
        label_path = None
        if labelled:
            label_path = labels / image_path.parent.name / f"{frame}{suffix}"
            if problem := pair_problem(frame, image_path, label_path, "ground truth", check_sizes):
                problems.append(problem)
                continue
        tiles.append(Tile(frame, image_path, label_path, None, part=part if part in OFFICIAL_PARTS else None))
    return tiles


def _read_cityscapes_label(path: Path, mapped: bool) -> np.ndarray:
    stored = read_index_png(path)
    if mapped:
        return _LOOKUP[stored]
    return check_indices(stored, CITYSCAPES_CLASSES.num_classes, path)
