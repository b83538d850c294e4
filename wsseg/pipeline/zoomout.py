"""The zoom-out model's steps before dense training, as the seed projects ran them
(`wsseg zoomout sample | fit | dense`; `wsseg train` runs them in order for `model.name: zoomout`):

    sample_hypercolumns  N1 tiles → fixed-grid crops → `zoomout.pixels_per_class` random pixels of
                         each class a crop holds → (hypercolumn, label) pairs, their mean and std
                                                                       → RUN/zoomout/samples/
    fit_classifier       the fully connected classifier on those pairs (Adam, class weights)
                                                                       → RUN/zoomout/classifier/
    dense_init           FC → 1×1 convolutions, on the very backbone the samples came from
                                                                       → RUN/zoomout/dense_init.pt

after which `segmenter.train_segmenter` fine-tunes that network densely on N1 crops (and N2
pseudo masks in task ii), as every segmenter trains, and evaluates it (`chain.run_task_i`).

Sampling costs one forward pass per crop and keeps a few hundred numbers per pixel of a few
pixels, so the fully connected classifier trains in seconds on what would be gigabytes of dense
hypercolumns; each N1 tile's samples are written as one file when the tile is done, so an
interrupted sampling continues with the next tile.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from wsseg.core.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint, unwrap
from wsseg.core.class_weights import class_weights as inverse_frequency_weights
from wsseg.core.config import Config, ConfigError, config_to_dict
from wsseg.core.distributed import barrier, choose_device, run_on_main
from wsseg.core.io import atomic_write_json
from wsseg.core.losses import weighted_cross_entropy
from wsseg.core.optim import build_optimizer, build_scheduler
from wsseg.core.progress import progress_bar
from wsseg.datasets.base import IGNORE_INDEX, ClassSpec
from wsseg.datasets.tags import grid_crops
from wsseg.datasets.tensors import image_to_tensor
from wsseg.models.zoomout import ZoomOut, fc_to_conv
from wsseg.pipeline.data import Run, class_record
from wsseg.pipeline.segmenter import build_model

log = logging.getLogger(__name__)

ZOOMOUT = "zoomout"
# The FC classifier trains without weight decay, as the seed projects fitted it (Adam 1e-3, no decay).
FC_WEIGHT_DECAY = 0.0


def samples_dir(run_dir: Path) -> Path:
    return run_dir / ZOOMOUT / "samples"


def classifier_dir(run_dir: Path) -> Path:
    return run_dir / ZOOMOUT / "classifier"


def dense_init_path(run_dir: Path) -> Path:
    return run_dir / ZOOMOUT / "dense_init.pt"


def finished(folder: Path) -> dict | None:
    """What a finished step wrote to its `done.json`, or None if it has not finished."""
    done = folder / "done.json"
    return json.loads(done.read_text()) if done.exists() else None


def check_zoomout_config(cfg: Config, classes: ClassSpec) -> None:
    """`zoomout.*` settings that typecheck but cannot work, before anything is sampled."""
    zo = cfg.zoomout
    for key in ("pixels_per_class", "sample_crop_px", "epochs", "batch_size"):
        if getattr(zo, key) < 1:
            raise ConfigError(f"zoomout.{key} must be at least 1, got {getattr(zo, key)}")
    if zo.lr <= 0:
        raise ConfigError(f"zoomout.lr must be > 0, got {zo.lr}")
    if isinstance(zo.class_weights, list):
        if len(zo.class_weights) != classes.num_classes:
            raise ConfigError(f"zoomout.class_weights has {len(zo.class_weights)} values for the "
                              f"{classes.num_classes} classes ({', '.join(classes.names)})")
        if min(zo.class_weights) < 0:
            raise ConfigError(f"zoomout.class_weights must be non-negative, got {zo.class_weights}")


# ----------------------------------------------------------------------------------- sample
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
            "pixels_per_class": cfg.zoomout.pixels_per_class, "sample_crop_px": cfg.zoomout.sample_crop_px,
            "seed": cfg.train.seed}


def sample_hypercolumns(run: Run) -> dict:
    """Sample (hypercolumn, label) pairs from every N1 tile into RUN/zoomout/samples/ (rank 0;
    the other processes wait): `<tile>.pt` per tile, `backbone.pt`, `feature_stats.pt`,
    `settings.json`, `done.json`. Tiles already sampled are skipped."""
    folder = samples_dir(run.run_dir)
    if (done := finished(folder)) is not None:
        log.info(f"zoomout sample: already finished in {folder}: {done['samples']} samples")
        return done
    result = run_on_main(lambda: _sample_on_main(run, folder), run.dist)
    barrier(run.dist)
    return result


def _sample_on_main(run: Run, folder: Path) -> dict:
    cfg, source, classes = run.cfg, run.source, run.source.classes
    device = choose_device(cfg.device, run.dist)
    backbone = folder / "backbone.pt"
    with torch.random.fork_rng(devices=[]):  # the run's RNG stays as it was for the stages after
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg, classes.num_classes, pretrained=not backbone.exists())
    settings = sampling_settings(cfg, model)
    settings_file = folder / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != json.loads(json.dumps(settings)):
        raise CheckpointError(f"{folder} holds samples drawn with other settings ({settings_file}); choose another "
                              f"--out, or delete {folder} to sample again")
    atomic_write_json(settings_file, settings)
    # The VGG weights (ImageNet, or a seeded fresh init) are kept before the first tile: a resumed
    # sampling and the dense network then start from exactly the backbone that made every sample.
    if backbone.exists():
        load_weights(model.features, load_checkpoint(backbone)["features"], str(backbone))
    else:
        save_checkpoint(backbone, {"features": model.features.state_dict()})
    model = model.to(device).eval()

    tiles = list(run.split.labelled)
    todo = [(index, t) for index, t in enumerate(tiles) if not (folder / f"{t}.pt").exists()]
    if len(todo) < len(tiles):
        log.info(f"zoomout sample: {len(tiles) - len(todo)} of {len(tiles)} N1 tiles already sampled in {folder}")
    for index, tile_id in progress_bar(todo, enabled=run.dist.is_main, desc="zoomout sample", unit="tile"):
        shard = sample_tile(model, source, tile_id, np.random.default_rng([cfg.train.seed, index]),
                            cfg.zoomout.pixels_per_class, cfg.zoomout.sample_crop_px, device)
        # The tile's samples appear at once, complete, or not at all: what a resumed run skips is done.
        save_checkpoint(folder / f"{tile_id}.pt", shard)

    features, labels = load_samples(folder, tiles)
    if not len(labels):
        raise ValueError(f"zoomout sample: the {len(tiles)} N1 tiles hold no labelled pixel to sample")
    mean, std = feature_statistics(features)
    save_checkpoint(folder / "feature_stats.pt", {"mean": mean, "std": std, "count": len(labels)})
    counts = np.bincount(labels.numpy(), minlength=classes.num_classes)
    done = {"samples": len(labels), "channels": features.shape[1], "tiles": len(tiles),
            "class_counts": dict(zip(classes.names, counts.tolist())), "settings": settings}
    log.info(f"zoomout sample: {len(labels)} hypercolumns of {features.shape[1]} channels from {len(tiles)} N1 tiles "
             f"({', '.join(f'{n} {c}' for n, c in zip(classes.names, counts.tolist()))})")
    atomic_write_json(folder / "done.json", done)
    return done


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


# -------------------------------------------------------------------------------------- fit
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


def fit_classifier(run: Run) -> dict:
    """Train the fully connected classifier on the samples (`zoomout.epochs` passes, Adam,
    weighted cross-entropy) into RUN/zoomout/classifier/ (`last.pt` each epoch, resumable)."""
    cfg, classes = run.cfg, run.source.classes
    folder, samples = classifier_dir(run.run_dir), samples_dir(run.run_dir)
    if (done := finished(folder)) is not None:
        log.info(f"zoomout fit: already finished in {folder}: loss {done['train_loss']:.4f}")
        return done
    if finished(samples) is None:
        raise CheckpointError(f"no finished samples in {samples}: run `wsseg zoomout sample` first")
    features, labels = load_samples(samples, run.split.labelled)
    stats = load_checkpoint(samples / "feature_stats.pt")
    weights = sample_class_weights(cfg, labels, classes.num_classes)
    zo = cfg.zoomout
    # Float32: a few million multiply-adds a batch gain nothing from autocast, which would only add
    # rounding between the classifier and its converted form. The samples are in memory: no workers.
    with run.stage(folder, "fp32", channels_last=False, workers=0) as stage:
        with torch.random.fork_rng(devices=[]):  # only the classifier's init draws from the stage's seed
            segmenter = build_model(cfg, classes.num_classes, pretrained=False)
        mlp = segmenter.fc_classifier()
        if mlp.norm.feature_mean.numel() != features.shape[1]:
            raise CheckpointError(f"the samples in {samples} have {features.shape[1]} channels, model "
                                  f"{cfg.model.options} makes {mlp.norm.feature_mean.numel()}")
        mlp.norm.set_statistics(stats["mean"], stats["std"])
        dataset = TensorDataset(features, labels)
        # Whole batches only (the loader drops the last part): never more than the samples hold.
        batch_size = max(1, min(zo.batch_size, len(dataset) // run.dist.world_size))
        loader = stage.loader(dataset, batch_size)
        model = stage.prepare(mlp)
        if weights is not None:
            log.info("zoomout fit: class weights %s", ", ".join(f"{n} {w:.2f}" for n, w in
                                                                 zip(classes.names, weights.tolist())))

        def compute_loss(model, batch, epoch):
            x, y = stage.to_device(batch[0]), stage.to_device(batch[1])
            logits = model(x)
            accuracy = (logits.argmax(1) == y).float().mean().item()
            return weighted_cross_entropy(logits, y, weights, ignore_index=classes.ignore_index), {"accuracy": accuracy}

        optimizer = build_optimizer(unwrap(model).parameters(), "adam", zo.lr, FC_WEIGHT_DECAY)
        scheduler = build_scheduler(optimizer, "constant", zo.epochs * len(loader))
        log.info(f"zoomout fit: {len(dataset)} samples of {features.shape[1]} channels, batches of {batch_size}, "
                 f"{zo.epochs} epochs")
        history = stage.fit(model, loader, optimizer, scheduler, compute_loss, zo.epochs, desc="zoomout_fc")
    last = history[-1]  # a resumed fit returns the epochs before the resume too
    result = {"epochs": zo.epochs, "samples": len(dataset), "train_loss": last["train_loss"],
              "train_accuracy": last.get("train_accuracy"), "checkpoint": "last.pt"}
    if run.dist.is_main:
        atomic_write_json(folder / "done.json", result)
    barrier(run.dist)
    return result


# ------------------------------------------------------------------------------------ dense
def conversion_error(mlp: torch.nn.Module, conv: torch.nn.Module, features: torch.Tensor) -> float:
    """Largest |logit difference| between the FC classifier and its 1×1-conv form on `features` (N×Z)."""
    with torch.no_grad():
        dense = conv(features[:, :, None, None])[:, :, 0, 0]
        return float((mlp(features) - dense).abs().max())


def dense_init(run: Run) -> Path:
    """The zoom-out segmenter that dense training starts from, written once (rank 0) to
    RUN/zoomout/dense_init.pt: the sampling backbone, and the FC classifier as 1×1 convolutions."""
    path = dense_init_path(run.run_dir)
    if path.exists():
        return path
    cfg, classes = run.cfg, run.source.classes
    samples, fc = samples_dir(run.run_dir), classifier_dir(run.run_dir)
    if finished(fc) is None:
        raise CheckpointError(f"no finished classifier in {fc}: run `wsseg zoomout fit` first")

    def make() -> float:
        with torch.random.fork_rng(devices=[]):
            model = build_model(cfg, classes.num_classes, pretrained=False)
        load_weights(model.features, load_checkpoint(samples / "backbone.pt")["features"], str(samples / "backbone.pt"))
        mlp = model.fc_classifier()
        load_weights(mlp, load_checkpoint(fc / "last.pt")["model"], str(fc / "last.pt"))
        mlp.eval()
        model.classifier.load_state_dict(fc_to_conv(mlp).state_dict())
        features, _ = load_samples(samples, run.split.labelled[:1])
        checked = features[:256]
        error = conversion_error(mlp, model.classifier.eval(), checked) if len(checked) else 0.0
        log.info(f"zoomout dense: FC classifier → 1×1 convolutions: max |Δ logit| {error:.2e} on {len(checked)} samples")
        save_checkpoint(path, {"model": model.state_dict(), "classes": class_record(classes),
                               "conversion_max_abs_diff": error, "config": config_to_dict(cfg)})
        return error

    run_on_main(make, run.dist)
    barrier(run.dist)
    return path


def initial_segmenter(run: Run) -> Path | None:
    """Where the segmenter of `run` starts training: for `model.name: zoomout`, the converted
    classifier on its sampling backbone, after sampling and fitting it if not done yet; None for
    the other segmenters (their ImageNet encoders) and whenever `model.init_from` gives the weights."""
    if run.cfg.model.name != ZOOMOUT or run.cfg.model.init_from:
        return None
    check_zoomout_config(run.cfg, run.source.classes)
    sample_hypercolumns(run)
    fit_classifier(run)
    return dense_init(run)
