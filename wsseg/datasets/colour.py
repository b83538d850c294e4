"""Reading images and label masks from disk, and converting colour-coded masks to class indices.

Every reader raises `DatasetError` naming the file, so a bad tile among hundreds is found at
once instead of surfacing later as a shape error deep inside a training step.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageFile

from wsseg.datasets.base import IGNORE_INDEX, DatasetError

# A truncated file must fail loudly, never come back half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Aerial mosaics are large (Vaihingen up to ~2.6k px, ADE full-format up to ~2.2k, Dubai 2.1k);
# Pillow's decompression-bomb guard is meant for untrusted uploads, not for local datasets.
Image.MAX_IMAGE_PIXELS = None

_TIFF_SUFFIXES = (".tif", ".tiff")

Colour = tuple[int, int, int]


# ------------------------------------------------------------------------------------- reading
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
        raise DatasetError(f"{path}: expected an 8-bit image, found dtype {array.dtype}")
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


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    path = _require_file(Path(path))
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tiff:
                shape = tiff.pages[0].shape
                planar = tiff.pages[0].planarconfig == tifffile.PLANARCONFIG.SEPARATE
        except Exception as error:
            raise DatasetError(f"{path}: cannot read TIFF header ({type(error).__name__}: {error})") from error
        return (int(shape[1]), int(shape[2])) if planar and len(shape) == 3 else (int(shape[0]), int(shape[1]))
    with _opened(path) as image:
        width, height = image.size
    return height, width


def check_same_size(image_path: Path, label_path: Path) -> None:
    """A mask must cover its image pixel for pixel; catches mismatched pairs before training."""
    image_hw, label_hw = image_size(image_path), image_size(label_path)
    if image_hw != label_hw:
        raise DatasetError(f"{label_path}: mask is {label_hw[0]}×{label_hw[1]} (H×W) but its image "
                           f"{image_path} is {image_hw[0]}×{image_hw[1]}")


# --------------------------------------------------------------------------------- colour masks
def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colour_str(packed: int) -> str:
    return f"({packed >> 16 & 255}, {packed >> 8 & 255}, {packed & 255})"


def decode_colour_mask(rgb: np.ndarray, palette: Sequence[Colour], path_for_errors: str | Path,
                       ignore_colours: Iterable[Colour] = (), tolerance: float = 0.0,
                       ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Colour-coded H×W×3 mask → uint8 class indices (`ignore_colours` → `ignore_index`).

    Colours must match the palette exactly unless `tolerance` > 0: then a colour within that
    Euclidean RGB distance of exactly one nearest palette colour takes its class (for masks that
    went through lossy compression). Anything else is an error naming the file, the colour and
    the first pixel (x, y) that has it — never silently class 0.
    """
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise DatasetError(f"{path_for_errors}: expected an H×W×3 colour mask, found shape {rgb.shape}")
    if len(palette) >= ignore_index:
        raise DatasetError(f"{path_for_errors}: {len(palette)} classes do not fit below ignore index {ignore_index}")
    keys = [int(k) for k in _pack(np.asarray(palette, dtype=np.int32).reshape(-1, 3))]
    values = list(range(len(keys)))
    for colour in ignore_colours:
        keys.append(int(_pack(np.asarray(colour, dtype=np.int32))))
        values.append(ignore_index)
    if len(set(keys)) != len(keys):
        raise DatasetError(f"{path_for_errors}: the palette and ignore colours repeat a colour")
    order = np.argsort(keys)
    sorted_keys = np.asarray(keys, dtype=np.int32)[order]
    sorted_values = np.asarray(values, dtype=np.uint8)[order]

    packed = _pack(rgb[..., :3])
    position = np.searchsorted(sorted_keys, packed)
    np.clip(position, 0, len(sorted_keys) - 1, out=position)
    matched = sorted_keys[position] == packed
    indices = sorted_values[position]
    if matched.all():
        return indices

    unknown = np.unique(packed[~matched])
    if tolerance > 0:
        table = np.asarray(palette, dtype=np.float64).reshape(-1, 3)
        unknown_rgb = np.stack([(unknown >> 16) & 255, (unknown >> 8) & 255, unknown & 255], 1).astype(np.float64)
        distance = np.linalg.norm(unknown_rgb[:, None, :] - table[None, :, :], axis=2)
        nearest = distance.argmin(axis=1)
        ok = distance[np.arange(len(unknown)), nearest] <= tolerance
        if ok.all():
            lookup_position = np.searchsorted(unknown, packed[~matched])
            indices[~matched] = nearest[lookup_position].astype(np.uint8)
            return indices
        unknown = unknown[~ok]

    first = int(unknown[0])
    ys, xs = np.nonzero(packed == first)
    n_bad = int(np.isin(packed, unknown).sum())
    known = ", ".join(_colour_str(k) for k in keys)
    raise DatasetError(
        f"{path_for_errors}: unknown colour {_colour_str(first)} at pixel (x={xs[0]}, y={ys[0]}) "
        f"({len(unknown)} unknown colour(s), {n_bad} pixels{f', tolerance {tolerance}' if tolerance else ''}); "
        f"known colours: {known}")


def encode_colour_mask(indices: np.ndarray, palette: Sequence[Colour],
                       ignore_colour: Colour = (0, 0, 0), ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """uint8 class indices → H×W×3 colours; ignore → `ignore_colour` (black)."""
    indices = np.asarray(indices)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    table[ignore_index] = ignore_colour
    bad = (indices >= len(palette)) & (indices != ignore_index)
    if bad.any() or (indices < 0).any():
        value = indices[bad | (indices < 0)].flat[0]
        raise DatasetError(f"class index {value} outside 0..{len(palette) - 1} (and ignore {ignore_index}): "
                           f"the palette has {len(palette)} colours")
    return table[indices.astype(np.uint8)]


def save_index_png(path: str | Path, indices: np.ndarray, palette: Sequence[Colour],
                   ignore_colour: Colour = (0, 0, 0)) -> None:
    """Write class indices as a palette-mode PNG: viewers show colours, readers get the indices.

    Pixel values are the indices themselves (ignore 255 stays 255), as in VOC's SegmentationClass.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise DatasetError(f"{path}: an index mask must be H×W, got shape {indices.shape}")
    if indices.dtype != np.uint8:
        if indices.min(initial=0) < 0 or indices.max(initial=0) > 255:
            raise DatasetError(f"{path}: index values must fit in 0..255")
        indices = indices.astype(np.uint8)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    table[IGNORE_INDEX] = ignore_colour
    image = Image.fromarray(indices, mode="P")
    image.putpalette(table.ravel().tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False)  # by name: an atomic write's temporary file has no .png


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


def check_indices(indices: np.ndarray, num_classes: int, path_for_errors: str | Path,
                  ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Every value must be a class or ignore; returns `indices` unchanged."""
    bad = (indices >= num_classes) & (indices != ignore_index)
    if bad.any():
        ys, xs = np.nonzero(bad)
        raise DatasetError(f"{path_for_errors}: class index {int(indices[ys[0], xs[0]])} at pixel "
                           f"(x={xs[0]}, y={ys[0]}) is outside 0..{num_classes - 1} (ignore {ignore_index})")
    return indices


def default_palette(num_classes: int) -> tuple[Colour, ...]:
    """Distinct display colours for datasets that define none (the PASCAL VOC bit-spread scheme)."""
    colours = []
    for index in range(num_classes):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours.append((r, g, b))
    return tuple(colours)
