"""What `wsseg predict` is asked, checked before anything is predicted: its options (windows,
bands, value range, test-time augmentation), its inputs and the files each of them writes, and
`classes.json`, which says what a mask value means.

A bad option or a clash of outputs found after an hour of predicting would waste the hour:
everything here raises `PredictError`, naming the option or the file, before the first window
runs (`pipeline.predict.predict_paths`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from wsseg.datasets.base import IGNORE_INDEX
from wsseg.models import min_input_px
from wsseg.pipeline.release import TrainedModel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
RASTER_SUFFIXES = (".tif", ".tiff")
CLASSES_FILE = "classes.json"


class PredictError(ValueError):
    """Bad input to `wsseg predict` / `wsseg export`; the message names the file or the option."""


# ----------------------------------------------------------------------------- the options
@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: softmax averaged over each scale × (identity and each flip)."""

    flips: tuple[str, ...] = ()  # "flip" (left-right), "vflip" (up-down)
    scales: tuple[float, ...] = (1.0,)

    @property
    def active(self) -> bool:
        return bool(self.flips) or self.scales != (1.0,)


def parse_tta(text: str | None) -> TTA:
    """`flip`, `vflip`, `scales=0.75,1,1.25`, comma-separated: "flip,scales=0.75,1,1.25"."""
    if not text:
        return TTA()
    flips: list[str] = []
    scales: list[float] | None = None
    for item in (part.strip() for part in text.split(",")):
        if item in ("flip", "vflip"):
            flips.append(item)
            continue
        number = item[len("scales="):] if item.startswith("scales=") else item
        if item.startswith("scales="):
            scales = []
        elif scales is None:
            raise PredictError(f"--tta: unknown item {item!r} in {text!r} (expected flip, vflip, scales=S1,S2,...)")
        try:
            scale = float(number)
        except ValueError:
            raise PredictError(f"--tta: scale {number!r} in {text!r} is not a number") from None
        if not 0.0 < scale <= 8.0:
            raise PredictError(f"--tta: scale {scale:g} in {text!r} must be in (0, 8]")
        scales.append(scale)
    if scales == []:
        raise PredictError(f"--tta: scales= names no scale in {text!r}")
    return TTA(tuple(dict.fromkeys(flips)), tuple(scales) if scales else (1.0,))


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """1-based band indices, "1,2,3" (or "4,1,2" for NIR-R-G from R-G-B-NIR imagery)."""
    if not text:
        return None
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise PredictError(f"--bands must be three comma-separated 1-based band indices, got {text!r}") from None
    if len(bands) != 3 or min(bands) < 1:
        raise PredictError(f"--bands must be three comma-separated 1-based band indices, got {text!r}")
    return bands


def parse_value_range(text: str | None) -> tuple[float, float] | None:
    """"LOW,HIGH" raster values mapped to 0 and 1; None ("auto"): ÷ 255 for 8-bit data, a 2–98 %
    percentile stretch per band otherwise."""
    if not text or text == "auto":
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise PredictError(f"--value-range must be auto or LOW,HIGH, got {text!r}") from None
    if not high > low:
        raise PredictError(f"--value-range: HIGH must exceed LOW, got {text!r}")
    return low, high


@dataclass
class PredictOptions:
    window_px: int
    stride_px: int
    batch_size: int = 4
    block_px: int = 2048
    bands: tuple[int, ...] | None = None
    value_range: tuple[float, float] | None = None
    tta: TTA = field(default_factory=TTA)
    crf: bool = False
    probabilities: bool = False
    force: bool = False
    progress: bool = True
    precision: str = "fp32"


def check_window(trained: TrainedModel, opts: PredictOptions) -> None:
    least = min_input_px(trained.model_name, trained.options)
    if opts.window_px < least:
        raise PredictError(f"--window {opts.window_px} px is smaller than {least} px, the least input "
                           f"{trained.model_name} takes")
    if not 1 <= opts.stride_px <= opts.window_px:
        raise PredictError(f"--stride must be in 1..window ({opts.window_px}), got {opts.stride_px}")
    if opts.batch_size < 1 or opts.block_px < 1:
        raise PredictError(f"--batch-size and --block must be positive, got {opts.batch_size}, {opts.block_px}")


# ------------------------------------------------------------------------------ the inputs
def find_inputs(inputs: Sequence[str | Path], pattern: str | None = None,
                exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """(file, path relative to where it was named) of each input: files as given, folders searched
    recursively for `pattern` (default: every image suffix); files under `exclude` are skipped."""
    found: list[tuple[Path, Path]] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_file():
            found.append((path, Path(path.name)))
        elif path.is_dir():
            matches = sorted(p for p in (path.rglob(pattern) if pattern else path.rglob("*"))
                             if p.is_file() and (pattern or p.suffix.lower() in IMAGE_SUFFIXES)
                             and not (exclude is not None and p.resolve().is_relative_to(exclude.resolve())))
            if not matches:
                raise PredictError(f"{path}: no {'files matching ' + repr(pattern) if pattern else 'images'} in it")
            found += [(p, p.relative_to(path)) for p in matches]
        else:
            raise PredictError(f"{path}: input not found")
    return found


def is_raster(path: Path) -> bool:
    return path.suffix.lower() in RASTER_SUFFIXES


def output_paths(relative: Path, out_dir: Path, raster: bool, probabilities: bool) -> dict[str, Path]:
    stem = out_dir / relative.parent / relative.stem
    paths = {"mask": Path(f"{stem}_mask.{'tif' if raster else 'png'}"), "overlay": Path(f"{stem}_overlay.png")}
    if probabilities:
        paths["probabilities"] = Path(f"{stem}_probabilities.{'tif' if raster else 'npy'}")
    return paths


def plan_outputs(inputs: list[tuple[Path, Path]], out_dir: Path, opts: PredictOptions) -> list[tuple[Path, dict]]:
    """Each input with its output files; two inputs writing one file, or a file that exists
    (without `force`), are errors before anything is predicted."""
    plan, owner = [], {}
    for path, relative in inputs:
        outputs = output_paths(relative, out_dir, is_raster(path), opts.probabilities)
        for target in outputs.values():
            if target in owner:
                raise PredictError(f"{path} and {owner[target]} would both write {target}: pass them in separate runs")
            owner[target] = path
            if target.exists() and not opts.force:
                raise PredictError(f"{target} exists (from {path}); pass --force to overwrite it")
        plan.append((path, outputs))
    return plan


def class_list(trained: TrainedModel) -> dict:
    """What the masks' values mean: each class's index, name and colour (`classes.json`). A palette
    PNG carries the colours but not the names, and a class index alone says nothing."""
    return {"classes": [{"index": k, "name": name, "colour": list(colour)}
                        for k, (name, colour) in enumerate(zip(trained.class_names, trained.palette))],
            "no_class": {"index": IGNORE_INDEX, "meaning": "nodata of a GeoTIFF input: not predicted"}}


def check_class_list(path: Path, classes: dict, force: bool) -> None:
    """A `classes.json` already in the output folder that lists other classes belongs to the masks
    of another model: writing over it would mislabel them (without `force`, an error)."""
    if force or not path.is_file():
        return
    try:
        same = json.loads(path.read_text(encoding="utf-8")) == classes
    except (OSError, ValueError):
        same = False
    if not same:
        raise PredictError(f"{path} lists other classes than this model's (masks of another model?); pass --force "
                           f"to overwrite it, or choose another --out")
