"""Reading images and index masks from disk: their pixels, their headers (size, bands, EXIF
orientation), and what the headers show to be wrong with a tile's pair of files before any pixel
is decoded.

Every reader raises `DatasetError` naming the file, so a bad tile among hundreds is found at
once instead of surfacing later as a shape error deep inside a training step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from wsseg.datasets.base import DataProblem, DatasetError, missing_file_problem

# A truncated file must fail loudly, never come back half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Aerial mosaics are large (Vaihingen up to ~2.6k px, ADE full-format up to ~2.2k, Dubai 2.1k);
# Pillow's decompression-bomb guard is meant for untrusted uploads, not for local datasets.
Image.MAX_IMAGE_PIXELS = None

_TIFF_SUFFIXES = (".tif", ".tiff")


def _require_file(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    return path


def _read_tiff(path: Path) -> np.ndarray:
    import logging

    import tifffile

    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    try:
        # tifffile only *logs or warns* about some truncations (a lost IFD, a short strip) and
        # then returns an empty or zero-filled array; here they must be errors.
        tiff_log.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with tifffile.TiffFile(path) as tiff:
                if len(tiff.pages) == 0:
                    raise DatasetError(f"{path}: TIFF has no readable image (truncated or not a TIFF)")
                array = tiff.pages[0].asarray()
    except DatasetError:
        raise
    except Exception as error:  # tifffile raises a zoo of types for broken files
        if "imagecodecs" in str(error):
            # LZW / PackBits need the optional imagecodecs package; Pillow decodes them natively.
            array = _read_pil(path, None)
        else:
            raise DatasetError(f"{path}: cannot read TIFF ({type(error).__name__}: {error})") from error
    finally:
        tiff_log.setLevel(level)
    # Planar (channels-first) rasters: bring channels last.
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
    return array


def _read_pil(path: Path, mode: str | None, convert_unless: tuple[str, ...] = ()) -> np.ndarray:
    """Decode with Pillow; `convert_unless`: convert to RGB unless the mode is one of these."""
    try:
        with Image.open(path) as image:
            image.load()
            if mode is not None and image.mode != mode:
                image = image.convert(mode)
            elif convert_unless and image.mode not in convert_unless:
                image = image.convert("RGB")
            return np.array(image)  # writable, unlike asarray of a PIL image
    except DatasetError:
        raise
    except Exception as error:  # PIL: OSError for truncation, UnidentifiedImageError, SyntaxError, ...
        raise DatasetError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error


def read_array(path: str | Path) -> np.ndarray:
    """The raw raster of a file, as stored (TIFF via tifffile, others via Pillow, no conversion)."""
    path = _require_file(Path(path))
    if path.suffix.lower() in _TIFF_SUFFIXES:
        return _read_tiff(path)
    return _read_pil(path, None)


def read_rgb(path: str | Path) -> np.ndarray:
    """Any 8-bit image as uint8 H×W×3 RGB (grey replicated, alpha dropped, palettes expanded)."""
    path = _require_file(Path(path))
    if path.suffix.lower() in _TIFF_SUFFIXES:
        array = _read_tiff(path)
    else:
        # Palette PNGs (Dubai tiles 2 and 4), RGBA and bilevel images go through Pillow's conversion.
        array = _read_pil(path, None, convert_unless=("RGB", "L", "I", "I;16", "I;16B", "I;16L", "F"))
    if array.dtype != np.uint8:
        raise DatasetError(f"{path}: expected an 8-bit image, found dtype {array.dtype}: training reads 8 bits "
                           f"per band (convert it; `wsseg predict` alone stretches other types)")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise DatasetError(f"{path}: expected an H×W×3 image, found shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


class _opened:
    """`Image.open` whose failures name the file."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Image.Image:
        try:
            self.image = Image.open(self.path)
        except Exception as error:
            raise DatasetError(f"{self.path}: cannot read image ({type(error).__name__}: {error})") from error
        return self.image

    def __exit__(self, *exc):
        self.image.close()


# EXIF / TIFF orientation values that turn the stored grid by 90° for display (width ↔ height).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, without decoding the pixels: size, bands, orientation.

    `bands` counts the colours as decoded (a palette image has the 3 of its palette); `orientation`
    is the EXIF (or TIFF) orientation, 1 when absent: the stored grid is the one shown."""

    height: int
    width: int
    bands: int
    orientation: int = 1

    @property
    def transposed_for_display(self) -> bool:
        return self.orientation in _TRANSPOSING_ORIENTATIONS


def image_header(path: str | Path) -> ImageHeader:
    """The header of an image file (TIFF via tifffile, others via Pillow); DatasetError naming it."""
    path = _require_file(Path(path))
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tiff:
                page = tiff.pages[0]
                shape, bands = page.shape, int(page.samplesperpixel)
                planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
                orientation = page.tags.get(274)
                orientation = int(orientation.value) if orientation is not None else 1
        except Exception as error:
            raise DatasetError(f"{path}: cannot read TIFF header ({type(error).__name__}: {error})") from error
        height, width = (shape[1], shape[2]) if planar and len(shape) == 3 else (shape[0], shape[1])
        return ImageHeader(int(height), int(width), bands, orientation)
    with _opened(path) as image:
        width, height = image.size
        bands = 3 if image.mode == "P" else 4 if image.mode == "PA" else len(image.getbands())
        try:
            # A PNG's getexif() decodes the whole image to look for an eXIf chunk after the pixels
            # (13 ms a 683×512 mask: 12 s to list LabelMeFacade); the PNG standard puts eXIf before
            # IDAT, where the header read has already found it.
            no_exif = image.format == "PNG" and "exif" not in image.info
            orientation = 1 if no_exif else int(image.getexif().get(_ORIENTATION_TAG, 1))
        except Exception:  # noqa: BLE001 -- a malformed EXIF block (any of Pillow's parse errors) says nothing
            # reliable about orientation: the stored grid it is
            orientation = 1
    return ImageHeader(int(height), int(width), bands, orientation)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    header = image_header(path)
    return header.height, header.width


def read_index_png(path: str | Path) -> np.ndarray:
    """Indices stored as pixel values (palette or greyscale PNG/TIFF) → uint8 H×W.

    The palette is deliberately not applied: the stored value *is* the class.
    """
    path = _require_file(Path(path))
    if path.suffix.lower() in _TIFF_SUFFIXES:
        array = _read_tiff(path)
    else:
        with _opened(path) as image:
            mode = image.mode
        if mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
            raise DatasetError(f"{path}: expected an index mask (palette or greyscale), found mode {mode!r}")
        array = _read_pil(path, None)
    if array.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel index mask, found shape {array.shape}")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise DatasetError(f"{path}: index values {array.min()}..{array.max()} do not fit in 0..255")
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array)


UNREADABLE_FIX = "re-export or replace the file, or remove its tile"


def without_path(error: Exception, path: str | Path) -> str:
    """The message of an error about `path`, without the leading "path: " that a problem record
    keeps apart."""
    return str(error).removeprefix(f"{path}: ")


def pair_problem(tile_id: str, present: Path, expected: Path, what: str, check_sizes: bool,
                 image_path: Path | None = None) -> DataProblem | None:
    """What keeps a listed file and its partner from making a tile: `expected` (its `what`) is
    missing, or (with `check_sizes`) the two headers give different sizes. `image_path` is the
    image of the pair, `present` unless the image is the partner that was looked for."""
    if not expected.is_file():
        return missing_file_problem(tile_id, present, expected, what)
    if not check_sizes:
        return None
    image = image_path or present
    return size_problem(tile_id, image, expected if image == present else present)


def size_problem(tile_id: str | None, image_path: Path, label_path: Path) -> DataProblem | None:
    """None if the headers of a mask and its image give one size; else the problem, naming the mask.

    An image whose EXIF orientation turns it by 90° for display, with a mask of the turned size,
    had its mask drawn on the displayed view: the fix says so."""
    headers = []
    for path in (image_path, label_path):
        try:
            headers.append(image_header(path))
        except DatasetError as error:
            return DataProblem(str(path), without_path(error, path), UNREADABLE_FIX, tile_id)
    image, label = headers
    if (image.height, image.width) == (label.height, label.width):
        return None
    problem = (f"mask is {label.height}×{label.width} (H×W) but its image {image_path} is "
               f"{image.height}×{image.width}")
    fix = "give the image and its mask one size (crop or re-export the mask), or remove the tile"
    if image.transposed_for_display and (image.width, image.height) == (label.height, label.width):
        problem += f" (the size shown after the image's EXIF orientation {image.orientation})"
        fix = ("wsseg reads pixels as stored, not turned by EXIF orientation: save the image with its rotation "
               "applied (PIL.ImageOps.exif_transpose), so that it matches the mask drawn on the turned view")
    return DataProblem(str(label_path), problem, fix, tile_id)
