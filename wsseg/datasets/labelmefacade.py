"""LabelMeFacade (Fröhlich, Rodner, Denzler, "A fast approach for pixelwise labeling of facade
images", ICPR 2010), as its repository (cvjena/labelmefacade) ships it::

    root/images/<stem>.jpg        945 LabelMe street photos, short side 512 px
    root/labels/<stem>.png        colour-coded, stored RGBA (alpha always 255)
    root/train.txt, test.txt      100 / 845 lines `images/<stem>.jpg`

`images/` also holds `filelist.txt` and an editor backup `filelist.txt~`: only `.jpg` files are
images. `root` may be the repository folder or the folder holding it.

The nine colours are the README's, and the masks use exactly these. `various` (black) is the
catch-all for everything else: a class, trained and scored, not void; no pixel is ignored. wsseg
draws it white (`LABELMEFACADE_CLASSES`), since its figures draw unlabelled pixels black.
"""

from __future__ import annotations

from pathlib import Path

from wsseg.datasets.base import ClassSpec, DataOptionError, TileSource
from wsseg.datasets.folder import paired_folder_source

# The masks' colours, as the README lists them.
LABELMEFACADE_COLOURS = ((0, 0, 0), (128, 0, 0), (128, 0, 128), (128, 128, 0), (128, 128, 128), (128, 64, 0),
                         (0, 128, 128), (0, 128, 0), (0, 0, 128))
# Drawn in those colours, but `various` in white: every figure and mask file wsseg writes draws
# unlabelled pixels (a pseudo mask's, say) black, and a class drawn black would look unlabelled.
LABELMEFACADE_CLASSES = ClassSpec(
    names=("various", "building", "car", "door", "pavement", "road", "sky", "vegetation", "window"),
    palette=((255, 255, 255), *LABELMEFACADE_COLOURS[1:]),
)
SPLIT_FILES = {"train": "train.txt", "test": "test.txt"}
_FOLDER = "labelmefacade"


def labelmefacade_source(root: str | Path, split: str | None = None, colour_tolerance: float = 0.0,
                         check_sizes: bool = True) -> TileSource:
    """The photos train.txt and test.txt name, each of its list's part ("train" or "test"; `split`
    reads one), ids the file stems.

    `colour_tolerance` (Euclidean RGB distance) is 0: the masks are lossless PNGs; raise it only
    for re-encoded copies."""
    if split not in (None, "train", "test"):
        raise DataOptionError(f"data.options.split must be train or test, got {split!r} (labelmefacade)")
    root = Path(root)
    if not (root / "images").is_dir() and (root / _FOLDER / "images").is_dir():
        root = root / _FOLDER
    classes = LABELMEFACADE_CLASSES
    return paired_folder_source(root, "images", "labels", classes.names, LABELMEFACADE_COLOURS,
                                mask_format="colour", image_suffixes=(".jpg",), colour_tolerance=colour_tolerance,
                                parts=None if split is None else [split], split_files=SPLIT_FILES,
                                name="labelmefacade", check_sizes=check_sizes, display_palette=classes.palette)
