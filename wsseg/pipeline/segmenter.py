"""The segmenter stage: train on N1 pixel labels (plus N2 pseudo masks in task ii), and evaluate
the best checkpoint on the test tiles with the full report (`pipeline.evaluation`).

With `online`, every N1 batch is paired with as many N2 crops learnt by weak-to-strong
consistency (`pipeline.semi`): without their tags (the semi arm) or restricted by them (task ii
with `weak.mode: online`).
"""

from __future__ import annotations

import bisect
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from wsseg.core.checkpoint import load_checkpoint, load_weights, unwrap
from wsseg.core.class_weights import CLASS_WEIGHT_FLOOR, class_pixel_counts, class_weights
from wsseg.core.evaluate import evaluate_tiles
from wsseg.core.losses import weighted_cross_entropy
from wsseg.core.optim import build_optimizer, build_scheduler
from wsseg.core.stage import Stage
from wsseg.datasets.base import TileSource
from wsseg.datasets.colour import encode_colour_mask
from wsseg.datasets.crops import RandomCropDataset
from wsseg.datasets.tags import CropTag, TagGrid
from wsseg.models import build_segmenter, load_encoder_weights, parameter_groups, untrained_options
from wsseg.pipeline.config import Config, weight_decay_of
from wsseg.pipeline.config_checks import encoder_weights_file
from wsseg.pipeline.data import Run
from wsseg.pipeline.evaluation import evaluate_checkpoint
from wsseg.pipeline.release import initialise_from, resolve_checkpoint
from wsseg.pipeline.semi import build_teacher, semi_crops, semi_loss

log = logging.getLogger(__name__)

# Loss weight of a pseudo-labelled pixel relative to a real label: equal, as every config had it;
# the confidence rule of the pseudo masks already leaves the doubtful pixels out.
PSEUDO_WEIGHT = 1.0
# Share of N2 crops in a batch under `weak.pseudo_mode: share`; under "extra" as many N2 crops come on
# top of the N1 ones. Half, as every config had it.
PSEUDO_RATIO = 0.5


class WeightedCrops(Dataset):
    """Crops with a loss weight per sample: 1 for real labels, `PSEUDO_WEIGHT` for pseudo masks.

    (image, mask) → (image, mask, weight)."""

    def __init__(self, crops: Dataset, weight: float):
        self.crops, self.weight = crops, weight

    def __len__(self):
        return len(self.crops)

    def tile_id_of(self, index: int) -> str:
        return self.crops.tile_id_of(index)

    def __getitem__(self, index):
        image, mask = self.crops[index]
        return image, mask, torch.tensor(self.weight, dtype=torch.float32)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.crops, "set_epoch"):
            self.crops.set_epoch(epoch)


class EpochConcat(ConcatDataset):
    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)

    def tile_id_of(self, index: int) -> str:
        part = bisect.bisect_right(self.cumulative_sizes, index)
        return self.datasets[part].tile_id_of(index - (self.cumulative_sizes[part - 1] if part else 0))


def training_crops(cfg: Config, run: Run, pseudo_masks: dict[str, Path] | None, oracle: bool = False) -> Dataset:
    """An epoch of N1 crops, with N2 crops (`weak.pseudo_mode`): labelled by the pseudo
    masks when given, or by the true N2 labels for the `oracle` (experiments only)."""
    source, split = run.source, run.split
    n1 = cfg.train.iters_per_epoch * cfg.train.batch_size
    n_pseudo = 0
    if pseudo_masks or oracle:
        if cfg.weak.pseudo_mode == "share":
            n_pseudo = int(round(n1 * PSEUDO_RATIO))
            n1 -= n_pseudo
        else:
            n_pseudo = cfg.train.iters_per_epoch * n2_per_batch(cfg)
    parts = [WeightedCrops(RandomCropDataset(source, split.labelled, cfg.train.crop_px, n1,
                                             augment=cfg.train.augment, seed=cfg.train.seed), 1.0)]
    if pseudo_masks:
        parts.append(WeightedCrops(RandomCropDataset(source, split.tagged, cfg.train.crop_px, n_pseudo,
                                                     augment=cfg.train.augment, label_override=pseudo_masks,
                                                     seed=cfg.train.seed + 1), PSEUDO_WEIGHT))
    elif oracle:
        check_oracle_labels(run)
        parts.append(WeightedCrops(RandomCropDataset(source, split.tagged, cfg.train.crop_px, n_pseudo,
                                                     augment=cfg.train.augment, seed=cfg.train.seed + 1), 1.0))
    return EpochConcat(parts)


def check_oracle_labels(run: Run) -> None:
    """The oracle learns from the N2 pixel labels: images tagged without a mask (`weak.tags_file`)
    have none. Checked before task i trains too, not only when the oracle starts, hours later."""
    unlabelled = [t for t in run.split.tagged if run.source.tile(t).label_path is None]
    if unlabelled:
        raise ValueError(f"the oracle needs the N2 pixel labels, and {len(unlabelled)} N2 tile(s) have none "
                         f"(first: {unlabelled[0]!r}): leave out --oracle for images tagged without a mask")


def n2_per_batch(cfg: Config) -> int:
    """N2 crops per batch: a `PSEUDO_RATIO` share of the batch, or on top of it ("extra")."""
    ratio, batch = PSEUDO_RATIO, cfg.train.batch_size
    return int(round(batch * ratio)) if cfg.weak.pseudo_mode == "share" else int(round(batch * ratio / (1 - ratio)))


def segmenter_class_weights(cfg: Config, source: TileSource, tile_ids) -> torch.Tensor | None:
    setting = cfg.train.class_weights
    if isinstance(setting, list):  # its length is checked with the config (`pipeline.config_checks.check_config`)
        return torch.tensor(setting, dtype=torch.float32)
    if setting == "none":
        return None
    counts = sum(class_pixel_counts(source.label(t), source.classes.num_classes, source.classes.ignore_index)
                 for t in tile_ids)
    # A class of a few labelled pixels gets a weight of 50 or more and is then predicted everywhere
    # (the cap); a dominant background gets about 0 and is never predicted (the floor): measured
    # frequencies are trusted only between the two.
    cap = cfg.train.class_weight_cap
    # A class the N1 labels lack still reaches the loss in task ii's pseudo masks and the oracle's
    # N2 labels: it weighs as a median-frequency class does (1), within the bounds.
    absent = min(max(1.0, CLASS_WEIGHT_FLOOR), cap if cap is not None else math.inf)
    weights = class_weights(counts, mode=setting, absent_weight=absent, floor=CLASS_WEIGHT_FLOOR, cap=cap)
    return torch.as_tensor(weights, dtype=torch.float32)


def build_model(cfg: Config, num_classes: int, pretrained: bool = True) -> torch.nn.Module:
    """The configured segmenter, with ImageNet encoder weights from a local file when configured
    (not with `pretrained=False`: for a model whose weights come from elsewhere)."""
    if not pretrained:
        return build_segmenter(cfg.model.name, num_classes, **untrained_options(cfg.model.options))
    model = build_segmenter(cfg.model.name, num_classes, **cfg.model.options)
    if cfg.model.encoder_weights:
        weights = encoder_weights_file(cfg.model.encoder_weights)
        load_encoder_weights(cfg.model.name, model, weights)
        log.info(f"{cfg.model.name}: ImageNet encoder weights from {weights}")
    return model


def init_from_trained(cfg: Config, class_names, model: torch.nn.Module) -> str:
    """Load the weights of `model.init_from` (any `resolve_checkpoint` spec) into `model`: all of
    them for the same classes, all but the classifier's with `model.reset_head`. Returns its source."""
    trained = resolve_checkpoint(cfg.model.init_from)
    initialise_from(model, trained, model_name=cfg.model.name, options=cfg.model.options, class_names=class_names,
                    reset_head=cfg.model.reset_head)
    return trained.source


def check_init_from(run: Run) -> None:
    """Fetch `model.init_from` and check that it fits this run's segmenter and classes, before any
    stage trains: task ii's segmenter starts hours into a run."""
    cfg = run.cfg
    if cfg.model.init_from:
        classes = run.source.classes
        with torch.random.fork_rng(devices=[]):  # building a model draws weights: leave the run's RNG alone
            source = init_from_trained(cfg, classes.names, build_model(cfg, classes.num_classes, pretrained=False))
        head = ", classifier learnt afresh" if cfg.model.reset_head else ""
        log.info(f"the segmenters start from {source}{head}")


def train_segmenter(run: Run, stage_dir: Path, *, pseudo_masks: dict[str, Path] | None = None,
                    oracle: bool = False, init_checkpoint: Path | None = None, title: str = "Task i",
                    epochs: int | None = None, online: bool = False,
                    crop_tags: Sequence[CropTag] | None = None) -> dict:
    """Train a segmenter on N1 (plus N2 pseudo masks when given, or N2's true labels for the
    `oracle`, or, `online`, N2's images by weak-to-strong consistency: without their tags for the
    semi arm, restricted by `crop_tags` for task ii's online mode); evaluate the best one on test.

    `epochs`: exactly that many (task ii and the oracle train as many as task i did); by default
    `train.epochs`, or as many of them as fit in `train.max_minutes`. The test metrics say how many
    were trained (`checkpoint.epochs_trained`)."""
    cfg, source, split = run.cfg, run.source, run.split
    max_minutes = cfg.train.max_minutes if epochs is None else None
    epochs = cfg.train.epochs if epochs is None else epochs
    classes = source.classes
    with run.stage(stage_dir, cfg.train.precision, cfg.train.channels_last) as stage:
        mixed = bool(pseudo_masks) or oracle
        extra = n2_per_batch(cfg) if mixed and cfg.weak.pseudo_mode == "extra" else 0
        batch_size = cfg.train.batch_size + extra
        crops = training_crops(cfg, run, pseudo_masks, oracle)
        tagged = set(split.tagged)
        tag_grid = (TagGrid([t for t in crop_tags if t.tile_id in tagged], classes.num_classes)
                    if online and crop_tags is not None else None)
        loader = stage.loader(semi_crops(cfg, run, crops, tag_grid) if online else crops, batch_size)

        # A model that starts from trained weights needs no ImageNet weights to overwrite.
        model = build_model(cfg, classes.num_classes, pretrained=init_checkpoint is None and not cfg.model.init_from)
        if init_checkpoint is not None:
            # A zoom-out segmenter starts from its FC classifier fitted on N1 (pipeline.zoomout.dense_init).
            load_weights(model, load_checkpoint(init_checkpoint)["model"], str(init_checkpoint))
            log.info(f"{stage_dir.name}: initialised from {init_checkpoint}")
        elif cfg.model.init_from and not (run.resume and (stage_dir / "last.pt").exists()):
            origin = init_from_trained(cfg, classes.names, model)
            log.info(f"{stage_dir.name}: initialised from {origin}"
                     f"{', classifier learnt afresh' if cfg.model.reset_head else ''}")
        model = stage.prepare(model, input_shape=(batch_size, 3, cfg.train.crop_px, cfg.train.crop_px))

        weights = segmenter_class_weights(cfg, source, split.labelled)
        if weights is not None:
            log.info("class weights: %s", ", ".join(f"{n} {w:.2f}" for n, w in zip(classes.names, weights.tolist())))

        teacher = build_teacher(model) if online else None

        def compute_loss(model, batch, epoch):
            images, masks, sample_weights = batch
            logits = model(stage.images_to_device(images))
            masks = stage.to_device(masks)
            pixel_weights = stage.to_device(sample_weights)[:, None, None].expand_as(masks)
            return weighted_cross_entropy(logits, masks, weights, pixel_weights, classes.ignore_index), {}

        optimizer = build_optimizer(parameter_groups(cfg.model.name, unwrap(model), cfg.train.encoder_lr_mult),
                                    cfg.train.optimizer, cfg.train.lr, weight_decay_of(cfg.train))
        scheduler = build_scheduler(optimizer, cfg.train.schedule, epochs * len(loader))
        if online:
            compute_loss = semi_loss(cfg, stage, teacher, weights, classes.ignore_index,
                                     progress=lambda: scheduler.last_epoch / max(1, epochs * len(loader)))

        validate = _validation(run, stage) if split.val else None
        history = stage.fit(model, loader, optimizer, scheduler, compute_loss, epochs, validate,
                            max_minutes=max_minutes,
                            companions={"teacher": teacher} if teacher is not None else None)
    return evaluate_checkpoint(run, stage_dir, stage_dir / "best.pt", history, title=title,
                               train_tile_ids=split.labelled, epochs_trained=len(history))


def _validation(run: Run, stage: Stage):
    """Whole-tile validation of the val tiles (`fit` calls it after every epoch)."""
    cfg, source, split = run.cfg, run.source, run.split
    classes = source.classes
    shown = split.val[0]

    def validate(model, epoch):
        # Every process scores its share of the tiles and gets the same sums: the same best checkpoint.
        result = evaluate_tiles(unwrap(model), source, split.val, cfg.eval.window_px, cfg.eval.stride_px,
                                cfg.eval.batch_size, stage.device, stage.amp_dtype, keep_predictions=[shown],
                                progress=False, dist=run.dist)
        metrics = result.metrics(classes)
        if stage.writer is not None:
            # One validation tile as image | ground truth | prediction, to watch the masks form.
            panels = [source.image(shown), encode_colour_mask(source.label(shown), classes.palette),
                      encode_colour_mask(result.predictions[shown], classes.palette)]
            stage.writer.add_image(f"{stage.name}/val_{shown}", np.concatenate(panels, axis=1), epoch + 1,
                                   dataformats="HWC")
        return {"miou": metrics["miou"], "mean_f1": metrics["mean_f1"], "overall_accuracy": metrics["overall_accuracy"]}

    return validate
