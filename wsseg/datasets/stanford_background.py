"""Stanford Background (Gould, Fulton, Koller, "Decomposing a scene into geometric and
semantically consistent regions", ICCV 2009), with the label PNGs and split lists that
MMSegmentation's tutorial writes::

    root/images/<id>.jpg          715 outdoor scenes, about 320 × 240 px
    root/labels/<id>.png          palette PNG: 0..7 the classes, unknown stored as 15
    root/splits/{train,val}.txt   572 / 143 ids, one a line

`root` may be iccv09Data or the folder holding it.

The dataset's own labels (`labels/<id>.regions.txt`) mark unknown pixels with -1. The tutorial
turns -1 into 255 and saves a palette image of 8 colours, which Pillow writes with 4 bits a pixel,
keeping the low 4 bits of 255: 15. So 15, not 255, is unknown here, and comes out as ignore.
"""

from __future__ import annotations

from pathlib import Path

from wsseg.datasets.base import ClassSpec, DataOptionError, DatasetError, TileSource
from wsseg.datasets.folder import paired_folder_source

# The colours of the tutorial's PNG palette, so that masks wsseg writes look like the dataset's.
STANFORD_BACKGROUND_CLASSES = ClassSpec(
    names=("sky", "tree", "road", "grass", "water", "building", "mountain", "foreground_object"),
    palette=((128, 128, 128), (129, 127, 38), (120, 69, 125), (53, 125, 34), (0, 11, 123), (118, 20, 12),
             (122, 81, 25), (241, 134, 51)),
)
STORED_UNKNOWN = 15
SPLIT_FILES = {"train": "splits/train.txt", "val": "splits/val.txt"}
_FOLDER = "iccv09Data"


def stanford_background_source(root: str | Path, split: str | None = None, check_sizes: bool = True) -> TileSource:
    """The scenes the split lists name, each of its list's part ("train" or "val"; `split` reads
    one), ids the scene ids. Without splits/, every scene, of no part (`split.kind: seeded`)."""
    if split not in (None, "train", "val"):
        raise DataOptionError(f"data.options.split must be train or val, got {split!r} (stanford_background)")
    root = Path(root)
    if (root / _FOLDER).is_dir():
        root = root / _FOLDER
    labels = root / "labels"
    if labels.is_dir() and not any(labels.glob("*.png")) and any(labels.glob("*.regions.txt")):
        raise DatasetError(f"{labels}: holds the original <id>.regions.txt labels but no <id>.png: wsseg reads the "
                           f"PNGs of MMSegmentation's Stanford Background tutorial (each regions.txt as a uint8 "
                           f"palette PNG, -1 as 255), with its splits/train.txt and splits/val.txt")
    split_files = SPLIT_FILES if all((root / path).is_file() for path in SPLIT_FILES.values()) else None
    if split is not None and split_files is None:
        raise DatasetError(f"{root / 'splits'}: no train.txt and val.txt to read the {split!r} part from")
    classes = STANFORD_BACKGROUND_CLASSES
    return paired_folder_source(root, "images", "labels", classes.names, classes.palette, mask_format="index",
                                ignore_index=STORED_UNKNOWN, image_suffixes=(".jpg",),
                                parts=None if split is None else [split], split_files=split_files,
                                name="stanford_background", check_sizes=check_sizes)
