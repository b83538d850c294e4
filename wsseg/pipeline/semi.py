"""The tag-free semi-supervised arm (`--task semi`): task i's segmenter, steps and N1 batches,
plus as many N2 crops per batch learnt without their tags by weak-to-strong consistency
(FixMatch, Sohn et al. 2020; UniMatch, Yang et al. CVPR 2023). It answers the question a user
with tags has to ask: would the N2 images have helped as much without them? Task ii's online
mode (`weak.mode: online`) is the same training with each N2 crop's tags restricting its targets.

Per step: a mean teacher (Tarvainen & Valpola 2017: the student's weights averaged, predicting
without dropout or batch statistics) predicts each N2 crop's weak view (no gradient, in the
stage's precision); where its confidence reaches `semi.threshold` its class is the target of the
crop's strong view, CutMix boxes pasted from the next N2 crop of the batch, targets with them.
One student forward takes the N1 crops (and, with `semi.feature_perturbation`, the weak views
whose encoder features are dropped out); the strong views a second one that leaves BatchNorm's
running statistics alone. The unlabelled terms ramp up linearly over the first `RAMPUP` share of
the steps.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Callable

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import Dataset

from wsseg.core.checkpoint import unwrap
from wsseg.core.losses import weighted_cross_entropy
from wsseg.core.stage import Stage
from wsseg.datasets.crops import RandomCropDataset
from wsseg.datasets.tags import TagGrid
from wsseg.datasets.unlabelled import PairedCrops, UnlabelledViews
from wsseg.pipeline.config import Config
from wsseg.pipeline.data import Run
from wsseg.pseudo_labels.consistency import consistency_loss, consistency_targets, paste_boxes

# The weight of the strong view's loss beside the N1 cross-entropy (UniMatch: 0.5 for its two
# strong views together, 0.5 for the feature-perturbed one, the labelled loss 1).
UNLABELLED_WEIGHT = 0.5
# The teacher's weights move 1 % of the way to the student's per step: the usual mean-teacher decay
# (UniMatch's), and the only one measured here.
EMA_DECAY = 0.99
# The unlabelled weight rises linearly from 0 over this share of the steps: the early teacher knows
# only a few N1 crops, and its confident mistakes would otherwise be learnt first.
RAMPUP = 0.2
# Share of the N2 crops whose strong view gets a CutMix box from the next N2 crop: UniMatch's 0.5.
CUTMIX_P = 0.5


def semi_crops(cfg: Config, run: Run, labelled: Dataset, tag_grid: TagGrid | None = None) -> PairedCrops:
    """Task i's crops `labelled`, each paired with a crop of an N2 image, whose labels (if it has
    any) are never read; with what `tag_grid` says of its window when given (task ii online)."""
    unlabelled = RandomCropDataset(run.source, run.split.tagged, cfg.train.crop_px, len(labelled),
                                   augment=cfg.train.augment, seed=cfg.train.seed + 2, images_only=True)
    return PairedCrops(labelled, UnlabelledViews(unlabelled, CUTMIX_P, tag_grid))


def build_teacher(model: torch.nn.Module, decay: float = EMA_DECAY) -> AveragedModel:
    """The mean teacher of `model` (its weights and BatchNorm statistics averaged with `decay` per
    step). Under torchrun every process holds the same one: it averages the same synchronised weights."""
    student = unwrap(model)
    teacher = AveragedModel(copy.deepcopy(student), device=next(student.parameters()).device,
                            multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    return teacher.eval().requires_grad_(False)


@contextmanager
def frozen_running_stats(model: torch.nn.Module):
    """BatchNorm layers normalise with the batch's statistics but leave their running ones as they
    are (momentum 0) inside the block."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def semi_loss(cfg: Config, stage: Stage, teacher: AveragedModel, class_weights: torch.Tensor | None,
              ignore_index: int, progress: Callable[[], float], rampup: float = RAMPUP):
    """`compute_loss` of the semi arm; `progress()` is the share of the steps done, and the
    unlabelled terms reach their full weight at `rampup` of it (0: from the first step)."""
    semi = cfg.semi

    def compute_loss(model, batch, epoch):
        images, masks, sample_weights, views = batch
        n = images.shape[0]
        weak = stage.images_to_device(views["weak"])
        strong = stage.images_to_device(views["strong"])
        boxes = views["box"]
        with torch.no_grad():
            # The student's weights after the last step join the average before it teaches.
            teacher.update_parameters(unwrap(model))
            weak_logits = teacher(weak)
        # Task ii online: the classes a crop's tags rule out get probability 0 before the bar, so
        # the tags veto the teacher's confident mistakes; CutMix then moves each crop's vetted
        # targets with its pixels.
        tag_targets = views.get("tag_targets")
        if tag_targets is not None:
            tag_targets = stage.to_device(tag_targets)
        targets = consistency_targets(weak_logits, tag_targets, semi.threshold, ignore_index)
        mixed_targets = paste_boxes(targets, boxes)
        # The N1 crops go through as in task i (with the weak views for the feature perturbation,
        # as UniMatch pairs them); the strong views in a pass of their own whose batch statistics
        # never reach BatchNorm's running ones, so that evaluation normalises clean images as task
        # i's model does. (One pass over both drove Stanford Background's validation mIoU from task
        # i's 0.55 to 0.27 by epoch 9 while the N1 loss fell below task i's.)
        perturbed = semi.feature_perturbation > 0
        labelled = stage.images_to_device(images)
        if perturbed:
            both = model(torch.cat([labelled, weak]), perturb_from=n)
            logits, logits_fp = both[:n], both[n:]
        else:
            logits = model(labelled)
        with frozen_running_stats(model):
            logits_strong = model(paste_boxes(strong, boxes))
        masks = stage.to_device(masks)
        pixel_weights = stage.to_device(sample_weights)[:, None, None].expand_as(masks)
        loss_labelled = weighted_cross_entropy(logits, masks, class_weights, pixel_weights, ignore_index)
        ramp = min(1.0, progress() / rampup) if rampup > 0 else 1.0
        loss_strong = consistency_loss(logits_strong, mixed_targets, ignore_index)
        loss = loss_labelled + ramp * UNLABELLED_WEIGHT * loss_strong
        scalars = {"labelled": loss_labelled.item(), "strong": loss_strong.item(), "ramp": ramp,
                   "confident_pixels": (targets != ignore_index).float().mean().item()}
        if perturbed:
            loss_fp = consistency_loss(logits_fp, targets, ignore_index)
            loss = loss + ramp * semi.feature_perturbation * loss_fp
            scalars["feature_perturbation"] = loss_fp.item()
        return loss, scalars

    return compute_loss
