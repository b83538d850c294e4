"""The zoom-out model's steps before dense training, as the seed projects ran them
(`wsseg zoomout sample | fit | dense`; `wsseg train` runs them in order for `model.name: zoomout`):

    sample_hypercolumns  N1 tiles → fixed-grid crops → `PIXELS_PER_CLASS` random pixels of
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
interrupted sampling continues with the next tile. The samples themselves, apart from the run
folder, are `pipeline.zoomout_samples`'.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from wsseg.core.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint, unwrap
from wsseg.core.distributed import barrier, choose_device, run_on_main
from wsseg.core.io import atomic_write_json
from wsseg.core.losses import weighted_cross_entropy
from wsseg.core.optim import build_optimizer, build_scheduler
from wsseg.core.progress import progress_bar
from wsseg.core.typed import ConfigError
from wsseg.datasets.base import ClassSpec
from wsseg.models.zoomout import fc_to_conv
from wsseg.pipeline.config import Config, config_to_dict
from wsseg.pipeline.data import Run, class_record
from wsseg.pipeline.segmenter import build_model
from wsseg.pipeline.zoomout_samples import (PIXELS_PER_CLASS, conversion_error, feature_statistics, load_samples,
                                            sample_class_weights, sample_tile, sampling_settings)

log = logging.getLogger(__name__)

ZOOMOUT = "zoomout"
# The FC classifier trains as the seed projects fitted it: Adam at 1e-3 on batches of 128 samples,
# no weight decay.
FC_LR = 1e-3
FC_BATCH_SIZE = 128
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
    for key in ("sample_crop_px", "epochs"):
        if getattr(zo, key) < 1:
            raise ConfigError(f"zoomout.{key} must be at least 1, got {getattr(zo, key)}")
    if isinstance(zo.class_weights, list):
        if len(zo.class_weights) != classes.num_classes:
            raise ConfigError(f"zoomout.class_weights has {len(zo.class_weights)} values for the "
                              f"{classes.num_classes} classes ({', '.join(classes.names)})")
        if min(zo.class_weights) < 0:
            raise ConfigError(f"zoomout.class_weights must be non-negative, got {zo.class_weights}")


# ----------------------------------------------------------------------------------- sample
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
                            PIXELS_PER_CLASS, cfg.zoomout.sample_crop_px, device)
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


# -------------------------------------------------------------------------------------- fit
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
        batch_size = max(1, min(FC_BATCH_SIZE, len(dataset) // run.dist.world_size))
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

        optimizer = build_optimizer(unwrap(model).parameters(), "adam", FC_LR, FC_WEIGHT_DECAY)
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
        backbone = samples / "backbone.pt"
        load_weights(model.features, load_checkpoint(backbone)["features"], str(backbone))
        mlp = model.fc_classifier()
        load_weights(mlp, load_checkpoint(fc / "last.pt")["model"], str(fc / "last.pt"))
        mlp.eval()
        model.classifier.load_state_dict(fc_to_conv(mlp).state_dict())
        features, _ = load_samples(samples, run.split.labelled[:1])
        checked = features[:256]
        error = conversion_error(mlp, model.classifier.eval(), checked) if len(checked) else 0.0
        log.info(f"zoomout dense: FC classifier → 1×1 convolutions: max |Δ logit| {error:.2e} on {len(checked)} "
                 f"samples")
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
