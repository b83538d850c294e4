"""PASCAL VOC 2012 in the VOCdevkit layout::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png        palette PNG: value = class, 255 = ignore
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png     SBD-augmented masks (train_aug), same coding
    VOCdevkit/VOC2012/ImageSets/Segmentation/<split>.txt

`root` may be VOC2012 itself, VOCdevkit, or the folder holding VOCdevkit.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from wsseg.datasets.base import (ClassSpec, DataProblem, DatasetError, Tile, TileSource, missing_file_problem,
                                 with_problems)
from wsseg.datasets.colour import check_indices, voc_palette
from wsseg.datasets.folder import natural_key
from wsseg.datasets.image_files import pair_problem, read_index_png, read_rgb
from wsseg.datasets.split_lists import read_list_file

VOC_CLASSES = ClassSpec(
    names=("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor"),
    palette=voc_palette(21),
)


def find_voc2012(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(f"{root}: no VOC2012 folder with JPEGImages/ (looked in {root}, {root / 'VOC2012'}, "
                       f"{root / 'VOCdevkit' / 'VOC2012'})")


def voc_source(root: str | Path, split: str | None = None, label_dir: str = "SegmentationClass",
               check_sizes: bool = True) -> TileSource:
    """Images listed in ImageSets/Segmentation/<split>.txt, or with `split=None` every image that has a mask.

    A tile's part comes from the official lists: "val" if val.txt lists it, else "train" (train.txt,
    or with SegmentationClassAug the SBD images, which train_aug adds to train); no part where
    neither list exists. The test images have no public masks, so they never appear.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: VOC root folder not found")
    voc = find_voc2012(root)
    images, labels = voc / "JPEGImages", voc / label_dir
    if not labels.is_dir():
        raise DatasetError(f"{labels}: mask folder not found")
    lists = voc / "ImageSets" / "Segmentation"
    if split is not None:
        if not (lists / f"{split}.txt").is_file():
            raise DatasetError(f"{lists / f'{split}.txt'}: split list not found")
        entries = [(line, line.entry) for line in read_list_file(lists / f"{split}.txt")]
    else:
        entries = [(None, p.stem) for p in sorted(labels.glob("*.png"), key=lambda p: natural_key(p.stem))]
        if not entries:
            raise DatasetError(f"{labels}: no .png masks")
    val_ids = set(_read_list(lists / "val.txt")) if (lists / "val.txt").is_file() else None
    train_ids = set(_read_list(lists / "train.txt")) if (lists / "train.txt").is_file() else None
    tiles, problems = [], []
    for line, image_id in entries:
        image_path, label_path = images / f"{image_id}.jpg", labels / f"{image_id}.png"
        missing = [path for path in (image_path, label_path) if not path.is_file()]
        if line is not None and missing:
            # A listed id without its files: the list is where to look, and what to fix.
            problems.append(DataProblem(line.where, f"lists {image_id!r}, but there is no {missing[0]}",
                                        f"correct or delete line {line.line} of {line.path.name}, or restore the "
                                        f"file", image_id))
        elif not image_path.is_file():
            problems.append(missing_file_problem(image_id, label_path, image_path, "image"))
        elif problem := pair_problem(image_id, image_path, label_path, "mask", check_sizes):
            problems.append(problem)
        else:
            tiles.append(Tile(image_id, image_path, label_path, None, part=_part(image_id, train_ids, val_ids)))
    return with_problems(TileSource("voc", VOC_CLASSES, tiles, read_image=read_rgb,
                                    read_label=partial(_read_voc_label, num_classes=VOC_CLASSES.num_classes)),
                         problems)


def _read_list(path: Path) -> list[str]:
    return [line.entry for line in read_list_file(path)]


def _part(image_id: str, train_ids: set[str] | None, val_ids: set[str] | None) -> str | None:
    if val_ids is not None and image_id in val_ids:
        return "val"
    if (train_ids is not None and image_id in train_ids) or val_ids is not None:
        return "train"
    return None


def _read_voc_label(path: Path, num_classes: int) -> np.ndarray:
    # The stored palette index is the class; the palette itself is only for display.
    return check_indices(read_index_png(path), num_classes, path)
