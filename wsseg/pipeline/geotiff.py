"""GeoTIFFs of any size, window by window with rasterio: the block layout that keeps a blockwise
sliding window identical to a whole-image one, band selection, value scaling, nodata, and the
output files (index mask with the class colour table, float32 probabilities, a preview overlay).

Memory follows the block size, never the raster: each block is read with a halo wide enough to
hold every evaluation window that touches it, predicted, cropped and written before the next.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from wsseg.datasets.base import IGNORE_INDEX
from wsseg.datasets.tensors import image_to_tensor

# The largest side of the preview overlay of a GeoTIFF (the mask itself is full size).
OVERLAY_MAX_PX = 2048
# Percentiles of the automatic stretch of non-8-bit imagery, and the side of the decimated read
# they are measured on, so that the whole raster is never in memory.
STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_SAMPLE_PX = 1024


class RasterError(ValueError):
    """A raster that cannot be read or written as asked; the message names the file."""


# ----------------------------------------------------------------------------- block layout
def block_spans(length_px: int, block_px: int, window_px: int, stride_px: int) -> list[tuple[int, int, int, int]]:
    """Along one axis: (block_start, block_end, read_start, read_end) of each block of `block_px`.

    `core.evaluate.sliding_window_logits` on the read span [read_start, read_end) places exactly
    the whole-image windows (the grid of `window_starts`: multiples of the stride, and the last
    window flush with the far edge) that cover the block, and no other window; the logits at the
    block's pixels are then the whole-image ones, summed in the same order. So a read span starts
    at the first grid window that reaches into the block (a halo of less than a window before
    it) and ends with the last one starting inside it, or at the far edge when the flush window
    reaches the block.
    """
    if length_px <= window_px:  # one window, padded as the whole image would be
        return [(0, length_px, 0, length_px)]
    spans = []
    for start in range(0, length_px, block_px):
        end = min(start + block_px, length_px)
        read_start = min(max(0, ((start - window_px) // stride_px + 1) * stride_px), length_px - window_px)
        if end > length_px - window_px:
            read_end = length_px
        else:
            read_end = (end - 1) // stride_px * stride_px + window_px
        spans.append((start, end, read_start, read_end))
    return spans


# ------------------------------------------------------------------------------- reading
@contextmanager
def open_raster(path: Path):
    """rasterio's dataset of `path`; unreadable files are a RasterError naming the file."""
    with _opened(path, "r", "read") as src:
        yield src


@contextmanager
def _opened(path: Path, mode: str, verb: str, **profile):
    """`rasterio.open`, quiet about rasters without a georeference, failures a RasterError."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(path, mode, **profile)
    except RasterioIOError as error:
        raise RasterError(f"{path}: cannot {verb} raster ({error})") from None
    try:
        yield dataset
    finally:
        dataset.close()


def default_bands(count: int, path: Path) -> tuple[int, ...]:
    """Bands 1, 2, 3 of a multiband raster; a single band as grey (1, 1, 1)."""
    if count >= 3:
        return (1, 2, 3)
    if count == 1:
        return (1, 1, 1)
    raise RasterError(f"{path}: {count} bands; say which three the model takes with --bands (e.g. 1,1,1 or 1,2,2)")


def check_bands(bands: Sequence[int], count: int, path: Path) -> tuple[int, ...]:
    """1-based `bands` (three of them), each within the file's `count` bands."""
    if len(bands) != 3:
        raise RasterError(f"{path}: --bands needs three band indices (the model takes 3 channels), got {list(bands)}")
    for band in bands:
        if not 1 <= band <= count:
            raise RasterError(f"{path}: has {count} band(s); --bands asks for band {band}")
    return tuple(bands)


def has_nodata(src, bands: Sequence[int]) -> bool:
    """Whether any of `bands` has a nodata value, a mask or an alpha band."""
    from rasterio.enums import MaskFlags

    return any(MaskFlags.all_valid not in src.mask_flag_enums[b - 1] for b in set(bands))


def valid_pixels(src, bands: Sequence[int], window) -> np.ndarray:
    """H×W bool: False where every band of `bands` is nodata (GDAL's dataset-mask rule)."""
    return src.read_masks(sorted(set(bands)), window=window).any(axis=0)


def value_range(src, bands: Sequence[int], requested: tuple[float, float] | None,
                path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The (low, high) per band that map to 0 and 1; None for 8-bit data (÷ 255, as in training).

    `requested` fixes one range for every band. Otherwise other data types are stretched between
    the 2nd and 98th percentile of each band, measured on a decimated read that skips nodata:
    one range for the whole raster, so that every block is scaled alike.
    """
    dtypes = {src.dtypes[b - 1] for b in bands}
    if requested is not None:
        low, high = requested
        return np.full(len(bands), low, np.float32), np.full(len(bands), high, np.float32)
    if dtypes == {"uint8"}:
        return None
    from rasterio.enums import Resampling

    scale = min(1.0, STRETCH_SAMPLE_PX / max(src.height, src.width))
    shape = (len(bands), max(1, round(src.height * scale)), max(1, round(src.width * scale)))
    sample = src.read(list(bands), out_shape=shape, resampling=Resampling.nearest, masked=True)
    lows, highs = [], []
    for band, values in zip(bands, sample):
        values = values.compressed().astype(np.float64)
        if values.size == 0:
            raise RasterError(f"{path}: band {band} holds nodata only")
        low, high = np.percentile(values, STRETCH_PERCENTILES)
        lows.append(low)
        highs.append(high if high > low else low + 1)
    return np.asarray(lows, np.float32), np.asarray(highs, np.float32)


def to_image_tensor(bands_array: np.ndarray, scaling: tuple[np.ndarray, np.ndarray] | None) -> torch.Tensor:
    """k×H×W raster values → float32 3×H×W in [0, 1], the input every wsseg model takes."""
    if scaling is None:  # 8-bit: the very conversion the training crops went through
        return image_to_tensor(np.moveaxis(bands_array, 0, -1))
    low, high = (torch.from_numpy(v)[:, None, None] for v in scaling)
    image = torch.from_numpy(bands_array.astype(np.float32))
    return ((image - low) / (high - low)).clamp_(0.0, 1.0)


# ------------------------------------------------------------------------------- writing
def colour_table(palette: Sequence[tuple[int, int, int]]) -> dict[int, tuple[int, int, int, int]]:
    """The GeoTIFF colour table: class i in its palette colour, nodata (255) transparent."""
    table = {i: (int(r), int(g), int(b), 255) for i, (r, g, b) in enumerate(palette)}
    table[IGNORE_INDEX] = (0, 0, 0, 0)
    return table


def output_profile(src, count: int, dtype: str, nodata) -> dict:
    """A tiled, compressed GeoTIFF on the grid of `src` (CRS and transform kept)."""
    profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": count, "dtype": dtype,
               "crs": src.crs, "transform": src.transform, "nodata": nodata, "compress": "deflate",
               "tiled": True, "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER"}
    if src.width < 256 or src.height < 256:  # GTiff tiles must fit: small rasters are written in strips
        profile.update(tiled=False, blockxsize=None, blockysize=None)
        profile = {k: v for k, v in profile.items() if v is not None}
    return profile


@contextmanager
def open_for_writing(path: Path, profile: dict):
    with _opened(path, "w", "write", **profile) as dst:
        yield dst


def describe_mask(dst, class_names: Sequence[str], palette) -> None:
    dst.write_colormap(1, colour_table(palette))
    dst.set_band_description(1, "class index")
    dst.update_tags(classes=json.dumps(list(class_names)), nodata_class=str(IGNORE_INDEX))


def describe_probabilities(dst, class_names: Sequence[str]) -> None:
    for band, name in enumerate(class_names, start=1):
        dst.set_band_description(band, name)


def iter_blocks(src, block_px: int, window_px: int, stride_px: int) -> Iterator[tuple]:
    """(block window, read window, block offset inside the read window) over the raster, row by row."""
    from rasterio.windows import Window

    for y0, y1, ry0, ry1 in block_spans(src.height, block_px, window_px, stride_px):
        for x0, x1, rx0, rx1 in block_spans(src.width, block_px, window_px, stride_px):
            yield (Window(x0, y0, x1 - x0, y1 - y0), Window(rx0, ry0, rx1 - rx0, ry1 - ry0),
                   (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0)))


def overview(src, bands: Sequence[int], scaling, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The image (uint8 H×W×3) and the written mask at preview size (longest side ≤ OVERLAY_MAX_PX),
    by decimated reads: nearest neighbour, so mask values stay classes."""
    from rasterio.enums import Resampling

    scale = min(1.0, OVERLAY_MAX_PX / max(src.height, src.width))
    height, width = max(1, round(src.height * scale)), max(1, round(src.width * scale))
    image = src.read(list(bands), out_shape=(len(bands), height, width), resampling=Resampling.nearest)
    rgb = (to_image_tensor(image, scaling) * 255).round().byte().permute(1, 2, 0).numpy()
    with open_raster(mask_path) as mask_src:
        mask = mask_src.read(1, out_shape=(height, width), resampling=Resampling.nearest)
    return rgb, mask
