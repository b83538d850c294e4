"""`wsseg predict`: a trained segmenter on new imagery (image files, folders, GeoTIFFs of any size).

Every input is predicted as evaluation predicts a test tile: windows of `window_px` every
`stride_px`, overlapping logits averaged (`core.evaluate.sliding_window_logits`), the window
settings defaulting to the checkpoint's `eval` ones. Under the output folder, `classes.json`
says which class each mask value is and the colour it is drawn in; per input (folder inputs keep
their sub-folders):

    <stem>_mask.png             palette PNG of class indices (ordinary images)
    <stem>_mask.tif             uint8 GeoTIFF on the input's grid (CRS, transform kept), the class
                                colours as its colour table, 255 where the input is nodata
    <stem>_overlay.png          the image blended with the class colours (for a GeoTIFF a preview
                                whose longest side is at most `geotiff.OVERLAY_MAX_PX`)
    <stem>_probabilities.npy    C×H×W float32 softmax (`probabilities=True`; ordinary images)
    <stem>_probabilities.tif    the same as a C-band float32 GeoTIFF, NaN where nodata

TIFF inputs are read with rasterio block by block (`block_px` plus a halo, see
`geotiff.block_spans`), so memory follows the block, not the raster, and without TTA the mask is
the whole-image sliding window's exactly. Other images are decoded whole with Pillow.

`precision` as the config's `train.precision`: fp32, bf16, fp16 (CUDA), or auto, the faster of
fp32 and the device's 16-bit autocast, timed on a few window batches when prediction starts
(`core.precision`); 16-bit logits may flip the class of a pixel near a tie.

The options, the inputs and the output files are checked first, all of them (`pipeline.predict_plan`).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wsseg.core.distributed import autocast_dtype
from wsseg.core.evaluate import sliding_window_logits
from wsseg.core.io import atomic_write, atomic_write_json
from wsseg.core.precision import resolve_precision
from wsseg.core.progress import progress_bar
from wsseg.datasets.base import IGNORE_INDEX
from wsseg.datasets.colour import encode_colour_mask, save_index_png
from wsseg.datasets.tensors import image_to_tensor
from wsseg.pipeline import geotiff
from wsseg.pipeline.predict_plan import (CLASSES_FILE, PredictError, PredictOptions, check_class_list, check_window,
                                         class_list, find_inputs, is_raster, plan_outputs)
from wsseg.pipeline.release import TrainedModel

log = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.5


def class_scores(model: torch.nn.Module, image: torch.Tensor, num_classes: int, opts: PredictOptions,
                 need_probabilities: bool,
                 amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 H×W classes and, when asked (or with TTA), float32 C×H×W probabilities of a 3×H×W image.

    Without TTA the classes are the argmax of the averaged logits, as `core.evaluate.predict_tile`
    gives them; with TTA, of the softmax averaged over the scales and flips. The model runs on
    its own device, under autocast to `amp_dtype` if given.
    """
    run = dict(num_classes=num_classes, window_px=opts.window_px, stride_px=opts.stride_px,
               batch_size=opts.batch_size, amp_dtype=amp_dtype)
    if not opts.tta.active:
        logits = sliding_window_logits(model, image, **run)
        return logits.argmax(dim=0).to(torch.uint8), logits.softmax(dim=0) if need_probabilities else None
    _, height, width = image.shape
    total = torch.zeros(num_classes, height, width)
    count = 0
    for scale in opts.tta.scales:
        scaled = image
        if scale != 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                                   antialias=scale < 1.0)[0].clamp_(0.0, 1.0)
        for flip in (None, *opts.tta.flips):
            dims = {None: [], "flip": [2], "vflip": [1]}[flip]
            probs = sliding_window_logits(model, scaled.flip(dims) if dims else scaled, **run).softmax(dim=0)
            probs = probs.flip(dims) if dims else probs
            if scale != 1.0:
                probs = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            total += probs
            count += 1
    probs = total / count
    return probs.argmax(dim=0).to(torch.uint8), probs


def overlay(image_rgb: np.ndarray, mask: np.ndarray, palette, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image blended with the class colours; pixels without a class (255) keep the image."""
    colours = encode_colour_mask(mask, palette).astype(np.float32)
    blended = (1 - alpha) * image_rgb.astype(np.float32) + alpha * colours
    blended[mask == IGNORE_INDEX] = image_rgb[mask == IGNORE_INDEX]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def read_image_bands(path: Path) -> np.ndarray:
    """k×H×W values of an ordinary image: grey 1 band, RGB 3, RGBA 4; palettes expanded."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F", "RGB", "RGBA"):
                transparent = "A" in image.mode or "transparency" in image.info
                image = image.convert("RGBA" if transparent else "RGB")
            array = np.array(image)
    except Exception as error:  # PIL: OSError for truncation, UnidentifiedImageError, ...
        raise PredictError(f"{path}: cannot read image ({type(error).__name__}: {error})") from None
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def image_bands(count: int, bands: tuple[int, ...] | None, path: Path) -> tuple[int, ...]:
    if bands is None:
        return (1, 2, 3) if count >= 3 else (1, 1, 1)  # grey (with or without alpha) as grey RGB
    return geotiff.check_bands(bands, count, path)


def image_tensor(values: np.ndarray, value_range: tuple[float, float] | None) -> torch.Tensor:
    """k×H×W values of an ordinary image → the model's 3×H×W in [0, 1]."""
    if value_range is None and values.dtype == np.uint8:
        return image_to_tensor(np.moveaxis(values, 0, -1))  # as the training crops were made
    if value_range is None:
        finite = values.reshape(len(values), -1).astype(np.float64)
        lows, highs = np.percentile(finite, geotiff.STRETCH_PERCENTILES, axis=1)
        highs = np.where(highs > lows, highs, lows + 1)
    else:
        lows, highs = np.full(len(values), value_range[0]), np.full(len(values), value_range[1])
    return geotiff.to_image_tensor(values, (lows.astype(np.float32), highs.astype(np.float32)))


def to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    return (image * 255).round().byte().permute(1, 2, 0).numpy()


def predict_image(trained: TrainedModel, path: Path, outputs: dict[str, Path], opts: PredictOptions,
                  amp_dtype: torch.dtype | None = None) -> None:
    """An ordinary image, whole: palette PNG mask, overlay, optionally probabilities (.npy)."""
    values = read_image_bands(path)
    bands = image_bands(len(values), opts.bands, path)
    image = image_tensor(values[[b - 1 for b in bands]], opts.value_range)
    need_probabilities = opts.probabilities or opts.crf
    mask, probs = class_scores(trained.model, image, len(trained.class_names), opts, need_probabilities, amp_dtype)
    if opts.crf:
        from wsseg.pseudo_labels.crf import dense_crf

        probs = torch.from_numpy(dense_crf(to_uint8_rgb(image), probs.numpy()))
        mask = probs.argmax(dim=0).to(torch.uint8)
    for target in outputs.values():
        target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(outputs["mask"], lambda tmp: save_index_png(tmp, mask.numpy(), trained.palette))
    Image.fromarray(overlay(to_uint8_rgb(image), mask.numpy(), trained.palette)).save(outputs["overlay"],
                                                                                     compress_level=1)
    if "probabilities" in outputs:
        np.save(outputs["probabilities"], probs.numpy().astype(np.float32))


def predict_raster(trained: TrainedModel, path: Path, outputs: dict[str, Path], opts: PredictOptions,
                   amp_dtype: torch.dtype | None = None) -> None:
    """A (Geo)TIFF block by block: uint8 mask GeoTIFF on its grid, preview overlay, optionally a
    float32 probabilities GeoTIFF. With `crf` a warning: the dense CRF needs the whole image."""
    if opts.crf:
        log.warning(f"{path}: --crf skipped: the dense CRF needs the whole image in memory, a GeoTIFF is "
                    f"predicted block by block")
    names = trained.class_names
    with geotiff.open_raster(path) as src:
        bands = (geotiff.check_bands(opts.bands, src.count, path) if opts.bands
                 else geotiff.default_bands(src.count, path))
        scaling = geotiff.value_range(src, bands, opts.value_range, path)
        masked = geotiff.has_nodata(src, bands)
        blocks = list(geotiff.iter_blocks(src, opts.block_px, opts.window_px, opts.stride_px))
        for target in outputs.values():
            target.parent.mkdir(parents=True, exist_ok=True)
        mask_profile = geotiff.output_profile(src, 1, "uint8", IGNORE_INDEX if masked else None)
        prob_profile = geotiff.output_profile(src, len(names), "float32", float("nan") if masked else None)
        with ExitStack() as files:
            mask_dst = files.enter_context(geotiff.open_for_writing(outputs["mask"], mask_profile))
            geotiff.describe_mask(mask_dst, names, trained.palette)
            prob_dst = None
            if "probabilities" in outputs:
                prob_dst = files.enter_context(geotiff.open_for_writing(outputs["probabilities"], prob_profile))
                geotiff.describe_probabilities(prob_dst, names)
            for block, read, inside in progress_bar(blocks, enabled=opts.progress, desc=path.name, unit="block",
                                                    leave=False):
                image = geotiff.to_image_tensor(src.read(list(bands), window=read), scaling)
                mask, probs = class_scores(trained.model, image, len(names), opts, prob_dst is not None, amp_dtype)
                mask = mask[inside].numpy()
                probs = probs[(slice(None), *inside)].numpy() if probs is not None else None
                if masked:
                    invalid = ~geotiff.valid_pixels(src, bands, block)
                    mask[invalid] = IGNORE_INDEX
                    if probs is not None:
                        probs[:, invalid] = np.nan
                mask_dst.write(mask, 1, window=block)
                if prob_dst is not None:
                    prob_dst.write(probs.astype(np.float32), window=block)
        rgb, small_mask = geotiff.overview(src, bands, scaling, outputs["mask"])
    Image.fromarray(overlay(rgb, small_mask, trained.palette)).save(outputs["overlay"], compress_level=1)


def predict_paths(trained: TrainedModel, inputs: Sequence[str | Path], out_dir: str | Path, opts: PredictOptions,
                  pattern: str | None = None) -> list[tuple[Path, dict]]:
    """Predict every input (files, folders searched recursively), after checking them all: the
    options, each file's header and bands, and the outputs. Returns each input with its outputs."""
    out_dir = Path(out_dir)
    check_window(trained, opts)
    plan = plan_outputs(find_inputs(inputs, pattern, exclude=out_dir), out_dir, opts)
    for path, _ in plan:
        check_input(path, opts)
    classes = class_list(trained)
    check_class_list(out_dir / CLASSES_FILE, classes, opts.force)
    device = next(trained.model.parameters()).device
    precision = resolve_precision(opts.precision, trained.model, (opts.batch_size, 3, opts.window_px, opts.window_px),
                                  device, cache_dir=None, training=False, what="prediction")
    amp_dtype = autocast_dtype(precision, device)
    # Before the masks: none is ever without the list that reads it.
    atomic_write_json(out_dir / CLASSES_FILE, classes)
    # A bar over the files, and one over the blocks of each GeoTIFF.
    for path, outputs in progress_bar(plan, enabled=opts.progress and len(plan) > 1, desc="predict", unit="image"):
        (predict_raster if is_raster(path) else predict_image)(trained, path, outputs, opts, amp_dtype)
    return plan


def check_input(path: Path, opts: PredictOptions) -> None:
    """Header and bands of one input, before any prediction: errors name the file."""
    if is_raster(path):
        with geotiff.open_raster(path) as src:
            if opts.bands:
                geotiff.check_bands(opts.bands, src.count, path)
            else:
                geotiff.default_bands(src.count, path)
        return
    try:
        with Image.open(path) as image:
            count = len(image.getbands()) if image.mode != "P" else 4 if "transparency" in image.info else 3
    except Exception as error:
        raise PredictError(f"{path}: cannot read image ({type(error).__name__}: {error})") from None
    image_bands(count, opts.bands, path)
