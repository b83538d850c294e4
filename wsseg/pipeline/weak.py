"""The weak stage of task ii: the single-stage segmenter (Araslanov & Roth, CVPR 2020) trained on
the fixed-grid crop tags (or the image-level tags) of the N1 and N2 tiles, by classification and
self-supervision."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import RandomSampler

from wsseg.core.checkpoint import unwrap
from wsseg.core.optim import build_optimizer, build_scheduler
from wsseg.datasets.base import IGNORE_INDEX
from wsseg.datasets.tagged_crops import TaggedCropDataset
from wsseg.datasets.tags import CropTag
from wsseg.models.single_stage import ClassLayout, SingleStageSegmenter
from wsseg.pipeline.config import Config
from wsseg.pipeline.config_checks import class_layout, single_stage_weights
from wsseg.pipeline.data import Run
from wsseg.pseudo_labels import pseudo_gt

log = logging.getLogger(__name__)

# The single-stage model's SGD rate, momentum and weight decay, and the weight of its
# self-supervised loss beside the classification loss: the published ones (Araslanov & Roth, CVPR 2020).
LR = 1e-3
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
SELF_SUPERVISED_WEIGHT = 1.0


def build_single_stage(cfg: Config, layout: ClassLayout, pretrained: bool = True) -> SingleStageSegmenter:
    ss = cfg.weak.single_stage
    return SingleStageSegmenter(layout.num_scored, backbone=ss.backbone, width=ss.width,
                                pretrained=single_stage_weights(cfg) if pretrained else None,
                                background="learned" if ss.constant_background is None else "constant")


def train_single_stage(run: Run, crop_tags: list[CropTag], stage_dir: Path) -> list[dict]:
    """Train the single-stage model on the crop tags, grid or image-level (classification + self-supervision)."""
    cfg, source = run.cfg, run.source
    ss = cfg.weak.single_stage
    # The run's precision; the default memory format (channels-last never measured faster for it).
    with run.stage(stage_dir, cfg.train.precision, channels_last=False) as stage:
        # Whole images keep their aspect ratio; grid crops are resized to the square as they always were.
        dataset = TaggedCropDataset(source, crop_tags, source.classes.num_classes, augment=ss.augment,
                                    crop_px=ss.crop_px, keep_aspect=cfg.weak.tags == "image")
        # Crops drawn with replacement, a different stream in each process under torchrun.
        generator = torch.Generator().manual_seed(cfg.train.seed + run.dist.rank)
        sampler = RandomSampler(dataset, replacement=True, num_samples=ss.iters_per_epoch * ss.batch_size,
                                generator=generator)
        loader = stage.loader(dataset, ss.batch_size, sampler=sampler)
        log.info(f"single-stage: {len(dataset)} tagged crops, backbone {ss.backbone} (width {ss.width}), "
                 + ("every class learned" if ss.constant_background is None
                    else f"constant background {ss.constant_background}"))

        layout = class_layout(cfg, source)
        model = stage.prepare(build_single_stage(cfg, layout), input_shape=(ss.batch_size, 3, ss.crop_px, ss.crop_px))

        def compute_loss(model, batch, epoch):
            images, tags, _ = batch
            images, tags = stage.images_to_device(images), stage.to_device(tags)
            self_supervised = epoch + 1 >= ss.self_supervised_from_epoch
            # PAMR only feeds the self-supervised loss: skip it in the classification-only epochs.
            out = model(images, refine=self_supervised)
            net = unwrap(model)
            scored_tags = layout.scored_tags(tags)
            loss_cls = net.classification_loss(out["cls"], scored_tags)
            scalars = {"cls": loss_cls.item()}
            loss = loss_cls
            if self_supervised:
                targets = net.self_supervised_targets(out, scored_tags, images.shape[-2:])
                loss_self = net.self_supervised_loss(out, scored_tags, images.shape[-2:],
                                                     gating=ss.self_supervised_gating, targets=targets)
                loss = loss + SELF_SUPERVISED_WEIGHT * loss_self
                used = pseudo_gt.counting_images(targets, scored_tags, out["logits"].shape[1],
                                                 background=ss.constant_background is not None,
                                                 gating=ss.self_supervised_gating)
                scalars.update({"self": loss_self.item(), "self_crops_used": used.float().mean().item(),
                                "self_pixels_labelled": (targets != IGNORE_INDEX).float().mean().item()})
            return loss, scalars

        optimizer = build_optimizer(unwrap(model).param_groups(LR, WEIGHT_DECAY), "sgd", LR, momentum=MOMENTUM)
        scheduler = build_scheduler(optimizer, "constant", ss.epochs * len(loader))
        history = stage.fit(model, loader, optimizer, scheduler, compute_loss, ss.epochs, desc="single_stage",
                            max_minutes=ss.max_minutes)
    warn_if_budget_left_no_self_supervision(history, ss)
    warn_if_self_supervision_idle(history, ss.self_supervised_gating)
    return history


def warn_if_budget_left_no_self_supervision(history: list[dict], ss) -> None:
    """A time budget that ends training before the self-supervised epochs leaves a classifier only."""
    if len(history) < min(ss.epochs, ss.self_supervised_from_epoch):
        log.warning(f"single-stage: weak.single_stage.max_minutes {ss.max_minutes} left {len(history)} of "
                    f"{ss.epochs} epochs, and the self-supervised loss starts in epoch "
                    f"{ss.self_supervised_from_epoch}: it never ran (raise the budget or lower "
                    f"self_supervised_from_epoch)")


def warn_if_self_supervision_idle(history: list[dict], gating: str) -> None:
    """A self-supervised loss that learned from no crop is a silent no-op: say so."""
    idle = [row["epoch"] for row in history if row.get("train_self_crops_used") == 0.0]
    if idle:
        hint = (" (gating 'image' needs a pseudo pixel for every tagged class of a crop: try "
                "weak.single_stage.self_supervised_gating: class)" if gating == "image" else "")
        log.warning(f"single-stage: the self-supervised loss used no crop in epoch(s) "
                    f"{', '.join(map(str, idle))}{hint}")
