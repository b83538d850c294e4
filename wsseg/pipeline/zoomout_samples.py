"""The zoom-out model's (hypercolumn, label) samples, apart from the run folder they are kept in:
which pixels of a crop are drawn, which hypercolumn cell holds each, one tile's samples, reading
them back, their statistics and class weights, and how closely the 1×1-conv form of the fitted
classifier matches it. The steps that write and read them in a run are `pipeline.zoomout`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsseg.core.checkpoint import CheckpointError, load_checkpoint
from wsseg.core.class_weights import class_weights as inverse_frequency_weights
from wsseg.datasets.base import IGNORE_INDEX
from wsseg.datasets.tags import grid_crops
from wsseg.datasets.tensors import image_to_tensor
from wsseg.models.zoomout import ZoomOut
from wsseg.pipeline.config import Config

# Random pixels drawn per class present in a crop: the seed projects' 3.
PIXELS_PER_CLASS = 3


def sample_pixels(label: np.ndarray, per_class: int, rng: np.random.Generator, num_classes: int,
                  ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, classes) of `per_class` distinct random pixels of every class present in
    `label`, class by class; a class with fewer pixels gives all of them. Never an `ignore_index`
    pixel: only the values 0 .. num_classes − 1 are classes."""
    flat = label.ravel()
    picked = []
    for value in np.unique(flat):
        if value == ignore_index or not 0 <= value < num_classes:
            continue
        where = np.flatnonzero(flat == value)
        picked.append(rng.choice(where, size=min(per_class, where.size), replace=False))
    index = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    rows, cols = np.divmod(index, label.shape[1])
    return rows, cols, flat[index].astype(np.int64)


def grid_cells(pixels: np.ndarray, length_px: int, grid_length: int) -> np.ndarray:
    """The hypercolumn grid cell (of `grid_length` along a side of `length_px`) holding each pixel's centre."""
    return np.minimum(grid_length - 1, ((pixels + 0.5) * grid_length / length_px).astype(np.int64))


def sampling_settings(cfg: Config, model: ZoomOut) -> dict:
    """What the samples depend on: a resumed sampling must not mix samples of two settings."""
    return {"backbone": model.backbone, "taps": model.features.taps, "feature_scale": model.feature_scale,
            "width": model.width, "channels": model.feature_channels, "encoder_weights": cfg.model.encoder_weights,
            "pixels_per_class": PIXELS_PER_CLASS, "sample_crop_px": cfg.zoomout.sample_crop_px,
            "seed": cfg.train.seed}


def sample_tile(model: ZoomOut, source, tile_id: str, rng: np.random.Generator, per_class: int, crop_px: int,
                device: torch.device) -> dict:
    """One tile's samples: each `crop_px` grid crop goes through the network alone (the seeds'
    "image") and gives `per_class` pixels of each of its classes, at the hypercolumn cell holding
    the pixel. Returns the tile id, `features` K×Z, `labels` K and `pixels` K×2 (row, col in the tile)."""
    image, label = source.image(tile_id), source.label(tile_id)
    classes = source.classes
    features, labels, pixels = [], [], []
    for y, x, h, w in grid_crops(label.shape[0], label.shape[1], crop_px):
        rows, cols, crop_labels = sample_pixels(label[y:y + h, x:x + w], per_class, rng, classes.num_classes,
                                                classes.ignore_index)
        if not len(crop_labels):
            continue
        grid_h, grid_w = model.grid_size(h, w)
        cells = [torch.as_tensor(grid_cells(p, n, g), device=device) for p, n, g in ((rows, h, grid_h),
                                                                                   (cols, w, grid_w))]
        crop = image_to_tensor(image[y:y + h, x:x + w])[None].to(device)
        with torch.no_grad():
            features.append(model.hypercolumns_at(crop, *cells).float().cpu())
        labels.append(torch.from_numpy(crop_labels))
        pixels.append(torch.from_numpy(np.stack([rows + y, cols + x], axis=1)))
    if not labels:
        return {"tile_id": tile_id, "features": torch.zeros(0, model.feature_channels),
                "labels": torch.zeros(0, dtype=torch.int64), "pixels": torch.zeros(0, 2, dtype=torch.int64)}
    return {"tile_id": tile_id, "features": torch.cat(features), "labels": torch.cat(labels),
            "pixels": torch.cat(pixels)}


def load_samples(folder: Path, tile_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples of `tile_ids` in `folder`: features N×Z (float32) and labels N."""
    shards = []
    for tile_id in tile_ids:
        shard = load_checkpoint(folder / f"{tile_id}.pt")
        if shard["tile_id"] != tile_id:
            raise CheckpointError(f"{folder / f'{tile_id}.pt'} holds the samples of tile {shard['tile_id']!r}")
        shards.append(shard)
    return torch.cat([s["features"] for s in shards]), torch.cat([s["labels"] for s in shards])


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of the samples, in float64, stored as float32. A
    channel that never varies (a ReLU that is 0 on every sample) gets std 1, not a division by
    0: it then feeds the classifier a constant 0."""
    values = features.double()
    mean, std = values.mean(0), values.std(0, unbiased=False)
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return mean.float(), std.float()


def sample_class_weights(cfg: Config, labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """`zoomout.class_weights`: given, none, or inverse frequency of the sampled labels (present
    classes averaging 1, as `train.class_weights: inverse` does for pixels)."""
    setting = cfg.zoomout.class_weights
    if isinstance(setting, list):
        return torch.tensor(setting, dtype=torch.float32)
    if setting == "none":
        return None
    counts = np.bincount(labels.numpy(), minlength=num_classes)
    return torch.as_tensor(inverse_frequency_weights(counts, mode="inverse"), dtype=torch.float32)


def conversion_error(mlp: torch.nn.Module, conv: torch.nn.Module, features: torch.Tensor) -> float:
    """Largest |logit difference| between the FC classifier and its 1×1-conv form on `features` (N×Z)."""
    with torch.no_grad():
        dense = conv(features[:, :, None, None])[:, :, 0, 0]
        return float((mlp(features) - dense).abs().max())
