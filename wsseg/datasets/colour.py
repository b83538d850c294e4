"""Class-index masks and their colours: colour-coded masks to indices and back, index PNGs written
with their palette, the palettes themselves. (Reading a mask file is `datasets.image_files`.)

A mask pixel is a class or ignore, nothing else: an unknown colour or index is a `DatasetError`
naming the file and the first pixel that has it, never silently class 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from wsseg.datasets.base import IGNORE_INDEX, DatasetError

Colour = tuple[int, int, int]


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


def check_indices(indices: np.ndarray, num_classes: int, path_for_errors: str | Path,
                  ignore_index: int = IGNORE_INDEX, ignore_key: str | None = None) -> np.ndarray:
    """Every value must be a class or ignore; returns `indices` unchanged.

    `ignore_key`: the option that sets the stored ignore value, where the user sets it; the error
    then names it, since a value just above the classes is most often an unlabelled value the
    loader was not told of (Stanford Background's PNGs store unknown as 15)."""
    bad = (indices >= num_classes) & (indices != ignore_index)
    if bad.any():
        ys, xs = np.nonzero(bad)
        value = int(indices[ys[0], xs[0]])
        where = f"{path_for_errors}: class index {value} at pixel (x={xs[0]}, y={ys[0]})"
        if ignore_key is None:
            raise DatasetError(f"{where} is outside 0..{num_classes - 1} (ignore {ignore_index})")
        raise DatasetError(f"{where} is neither a class 0..{num_classes - 1} nor the ignore value {ignore_index} "
                           f"({ignore_key}); if {value} marks unlabelled pixels, set {ignore_key}: {value}")
    return indices


def voc_palette(num_classes: int) -> tuple[Colour, ...]:
    """PASCAL VOC's colour map (its devkit's bit-spread scheme): class 0 is black, as VOC's
    background is drawn."""
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


def default_palette(num_classes: int) -> tuple[Colour, ...]:
    """Distinct display colours for datasets that define none: VOC's colour map without its black,
    which every figure and mask file uses for ignore (a class drawn black would look unlabelled)."""
    return voc_palette(num_classes + 1)[1:]
