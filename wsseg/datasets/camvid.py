"""CamVid in the SegNet layout::

    root/{train,val,test}/<name>.png
    root/{train,val,test}annot/<name>.png     index PNG: 0..10 the classes, 11 = void (→ ignore)
"""

from __future__ import annotations

from pathlib import Path

from wsseg.datasets.base import DataOptionError, TileSource
from wsseg.datasets.folder import paired_folder_source

CAMVID_NAMES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
                "bicyclist")
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
CAMVID_VOID = 11


def camvid_source(root: str | Path, split: str | None = None, check_sizes: bool = True) -> TileSource:
    """Every part present (or `split` alone), ids the frame names: unique across CamVid's parts,
    so they stay the same whichever parts are read."""
    if split not in (None, "train", "val", "test"):
        raise DataOptionError(f"data.options.split must be train, val or test, got {split!r} (camvid)")
    return paired_folder_source(root, "{part}", "{part}annot", CAMVID_NAMES, CAMVID_PALETTE, mask_format="index",
                                ignore_index=CAMVID_VOID, parts=None if split is None else [split],
                                prefix_part=False, name="camvid", check_sizes=check_sizes)
