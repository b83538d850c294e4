"""Task ii's weak stages: train the single-stage model on crop tags, then turn it into pseudo masks.

For every fixed-grid crop of an N2 tile: multi-scale + flip inference restricted to the crop's
tags, background power, PAMR, optionally a product with task i's segmenter (see
`fuse_with_segmenter`), dense CRF, then a confidence threshold that leaves uncertain pixels
unlabelled (255). Overlapping crops are averaged into one mask per tile, written as an indexed
PNG with the dataset palette. The N2 ground truth, where it exists, is read only to measure the
pseudo masks (`pseudo_quality.json`); nothing of it reaches training.
"""

from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from wsseg.core.checkpoint import CheckpointError, load_checkpoint, unwrap
from wsseg.core.config import Config, config_to_dict
from wsseg.core.distributed import DistInfo, autocast_dtype, choose_device
from wsseg.core.evaluate import sliding_window_logits
from wsseg.core.metrics import confusion_matrix, segmentation_metrics
from wsseg.core.train import build_scheduler, fit
from wsseg.datasets.base import TileSource
from wsseg.datasets.colour import read_index_png, save_index_png
from wsseg.datasets.crops import TaggedCropDataset
from wsseg.datasets.splits import Split
from wsseg.datasets.tags import CropTag, compute_crop_tags
from wsseg.models.single_stage import ClassLayout, SingleStageSegmenter
from wsseg.pseudo_labels.crf import dense_crf
from wsseg.pseudo_labels.pamr import refine_with_pamr

log = logging.getLogger("wsseg")


def class_layout(cfg: Config, source: TileSource) -> ClassLayout:
    ss = cfg.weak.single_stage
    if ss.background == "learned":
        return ClassLayout(source.classes.num_classes, None)
    if ss.background_class not in source.classes.names:
        raise ValueError(f"weak.single_stage.background_class {ss.background_class!r} is not a class of "
                         f"{source.name!r} ({', '.join(source.classes.names)})")
    return ClassLayout(source.classes.num_classes, source.classes.names.index(ss.background_class))


def build_single_stage(cfg: Config, layout: ClassLayout, pretrained: bool = True) -> SingleStageSegmenter:
    ss = cfg.weak.single_stage
    return SingleStageSegmenter(layout.num_scored, backbone=ss.backbone, width=ss.width,
                                pretrained=ss.pretrained if pretrained else None, background=ss.background,
                                pamr_dilations=ss.pamr_dilations, pamr_iter=ss.pamr_iter)


def train_single_stage(cfg: Config, source: TileSource, crop_tags: list[CropTag], stage_dir: Path, *,
                       resume: bool, dist_info: DistInfo = DistInfo()) -> list[dict]:
    """Train the single-stage model on the fixed-grid crop tags (classification + self-supervision)."""
    ss = cfg.weak.single_stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    device = choose_device(cfg.device, dist_info)
    amp_dtype = autocast_dtype(ss.precision, device)
    torch.manual_seed(cfg.train.seed)
    layout = class_layout(cfg, source)
    model = build_single_stage(cfg, layout).to(device)
    if ss.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.param_groups(ss.lr, ss.weight_decay), lr=ss.lr, momentum=ss.momentum)
    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    dataset = TaggedCropDataset(source, crop_tags, source.classes.num_classes, augment=True, crop_px=ss.crop_px)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    sampler = RandomSampler(dataset, replacement=True, num_samples=ss.iters_per_epoch * ss.batch_size,
                            generator=generator)
    loader = DataLoader(dataset, batch_size=ss.batch_size, sampler=sampler, num_workers=cfg.train.workers,
                        drop_last=True, pin_memory=device.type == "cuda")
    log.info(f"single-stage: {len(dataset)} tagged crops, backbone {ss.backbone} (width {ss.width}), "
             f"background {ss.background}" + (f" = {ss.background_class}" if ss.background == "constant" else ""))

    def compute_loss(model, batch, epoch):
        images, tags, _ = batch
        images, tags = images.to(device, non_blocking=True), tags.to(device, non_blocking=True)
        if ss.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self_supervised = epoch + 1 >= ss.self_supervised_from_epoch
        # PAMR only feeds the self-supervised loss: skip it in the classification-only epochs.
        out = model(images, refine=self_supervised)
        net = unwrap(model)
        scored_tags = layout.scored_tags(tags)
        loss_cls = net.classification_loss(out["cls"], scored_tags)
        scalars = {"cls": loss_cls.item()}
        loss = loss_cls
        if self_supervised:
            loss_self = net.self_supervised_loss(out, scored_tags, images.shape[-2:])
            loss = loss + ss.self_supervised_weight * loss_self
            scalars["self"] = loss_self.item()
        return loss, scalars

    scheduler = build_scheduler(optimizer, "constant", ss.epochs * len(loader), len(loader))
    writer = None
    if dist_info.is_main:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(stage_dir / "tb"))
    history = fit(model=model, loader=loader, optimizer=optimizer, scheduler=scheduler, compute_loss=compute_loss,
                  epochs=ss.epochs, run_dir=stage_dir, device=device, amp_dtype=amp_dtype, validate=None,
                  config=config_to_dict(cfg), resume=resume, dist_info=dist_info, writer=writer,
                  desc="single_stage", log=log.info)
    if writer is not None:
        writer.close()
    return history


# --------------------------------------------------------------------------------- pseudo masks
class _TagCrops(Dataset):
    """The N2 grid crops in tile order, with their tags; decoded in DataLoader workers."""

    def __init__(self, source: TileSource, crop_tags: list[CropTag], num_classes: int):
        self.source, self.crop_tags, self.num_classes = source, crop_tags, num_classes
        self._tile_id, self._image = None, None

    def __len__(self):
        return len(self.crop_tags)

    def __getitem__(self, index):
        tag = self.crop_tags[index]
        if tag.tile_id != self._tile_id:  # crops come tile by tile: decode each tile once per worker
            self._tile_id, self._image = tag.tile_id, self.source.image(tag.tile_id)
        crop = np.ascontiguousarray(self._image[tag.y:tag.y + tag.h, tag.x:tag.x + tag.w])
        tags = np.zeros(self.num_classes, dtype=np.float32)
        tags[list(tag.classes)] = 1.0
        return index, crop, tags


def _crf_job(args):
    index, crop, probs, crf_params = args
    refined = dense_crf(crop, probs, **crf_params) if crf_params is not None else probs
    return index, probs, refined


@dataclass
class _TileAccumulator:
    raw: np.ndarray
    crf: np.ndarray
    count: np.ndarray

    @classmethod
    def empty(cls, num_classes: int, height: int, width: int):
        return cls(np.zeros((num_classes, height, width), np.float32), np.zeros((num_classes, height, width), np.float32),
                   np.zeros((height, width), np.float32))

    def add(self, tag: CropTag, raw: np.ndarray, crf: np.ndarray) -> None:
        window = (slice(tag.y, tag.y + tag.h), slice(tag.x, tag.x + tag.w))
        self.raw[(slice(None), *window)] += raw
        self.crf[(slice(None), *window)] += crf
        self.count[window] += 1


def allowed_classes(tags: torch.Tensor, layout: ClassLayout) -> torch.Tensor:
    """The crop's tags in dataset order, plus the constant-logit class, which is never tagged away."""
    allowed = tags.clone()
    if layout.background_index is not None:
        allowed[layout.background_index] = 1.0
    return allowed


def _crop_probabilities(model: SingleStageSegmenter, layout: ClassLayout, crop: torch.Tensor, tags: torch.Tensor,
                        cfg: Config) -> np.ndarray:
    """Multi-scale + flip softmax restricted to the tags, background power, PAMR; dataset class order."""
    pm = cfg.weak.pseudo
    probs = model.predict_masks(crop, tags=layout.scored_tags(tags), scales=tuple(pm.scales), flip=pm.flip,
                                bg_pow=pm.bg_pow)
    probs = probs / probs.sum(0, keepdim=True).clamp(min=1e-8)
    if pm.use_pamr:
        probs = refine_with_pamr(crop[None], probs[None], dilations=cfg.weak.single_stage.pamr_dilations,
                                 num_iter=cfg.weak.single_stage.pamr_iter)[0]
    probs = layout.to_dataset_order(probs, dim=0)
    # Classes the crop is not tagged with stay impossible, whatever PAMR smeared into them.
    probs = probs * allowed_classes(tags, layout)[:, None, None]
    return (probs / probs.sum(0, keepdim=True).clamp(min=1e-8)).numpy()


def fuse_with_segmenter(weak_probs: np.ndarray, segmenter_probs: np.ndarray, allowed: np.ndarray,
                        weight: float, floor: float = 1e-6) -> np.ndarray:
    """Product of experts p ∝ p_weak^(1−w) · p_segmenter^w over the allowed classes (C×H×W each).

    The two models fail differently: the weak one saw every tagged crop but never a pixel label,
    the segmenter saw pixel labels of a few tiles only. A class survives where both find it
    plausible, and the tags veto the segmenter's guesses of absent classes. `floor` keeps a zero
    in one model from silencing the other completely.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weak.pseudo.segmenter_weight must be in [0, 1], got {weight}")
    if weak_probs.shape != segmenter_probs.shape:
        raise ValueError(f"weak probabilities {weak_probs.shape} and segmenter probabilities "
                         f"{segmenter_probs.shape} differ in shape")
    fused = (np.maximum(weak_probs, floor) ** (1.0 - weight)) * (np.maximum(segmenter_probs, floor) ** weight)
    fused = fused * np.asarray(allowed, dtype=fused.dtype).reshape(-1, 1, 1)
    return (fused / np.maximum(fused.sum(0, keepdims=True), 1e-12)).astype(np.float32)


def segmenter_probabilities(model: torch.nn.Module, image: np.ndarray, num_classes: int, cfg: Config) -> np.ndarray:
    """Softmax C×H×W of a trained segmenter on a whole tile (H×W×3 uint8), by sliding window."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    logits = sliding_window_logits(model, tensor, num_classes, cfg.eval.window_px, cfg.eval.stride_px,
                                   cfg.eval.batch_size)
    return logits.softmax(0).numpy()


def make_pseudo_masks(cfg: Config, source: TileSource, split: Split, crop_tags: list[CropTag], checkpoint: Path,
                      out_dir: Path, segmenter_checkpoint: Path | None = None) -> dict:
    """Write one pseudo mask PNG per N2 tile and return (and save) their quality report.

    `segmenter_checkpoint`: task i's segmenter, needed when `weak.pseudo.segmenter_weight` > 0.
    """
    pm = cfg.weak.pseudo
    classes = source.classes
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = class_layout(cfg, source)
    model = build_single_stage(cfg, layout, pretrained=False)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    model.eval()
    segmenter = None
    if pm.segmenter_weight > 0:
        if segmenter_checkpoint is None or not Path(segmenter_checkpoint).exists():
            raise CheckpointError(f"weak.pseudo.segmenter_weight is {pm.segmenter_weight} but task i's segmenter "
                                  f"checkpoint {segmenter_checkpoint} does not exist: run task i first")
        from wsseg.core.tasks import load_segmenter

        segmenter = load_segmenter(cfg, classes.num_classes, segmenter_checkpoint, torch.device("cpu"))

    # Calibration tiles go first: their pseudo masks are never used, but measured against their
    # pixel labels they tell which classes come out wrong, before any N2 mask is written. The
    # weak model never sees a pixel label, so the N1 tiles serve; task i's segmenter learned the
    # N1 tiles by heart, so once it takes part the validation tiles do.
    calibration = list(split.val) if segmenter is not None else list(split.labelled)
    order = calibration + list(split.tagged)
    tagged_tiles = {t.tile_id for t in crop_tags}
    calibration_tags = compute_crop_tags(source, [t for t in calibration if t not in tagged_tiles],
                                         cfg.weak.tag_crop_px, cfg.weak.tag_min_fraction)
    rank = {tile_id: i for i, tile_id in enumerate(order)}
    n2_tags = sorted((t for t in [*crop_tags, *calibration_tags] if t.tile_id in rank),
                     key=lambda t: (rank[t.tile_id], t.y, t.x))
    calibration_tiles = set(calibration)
    calibration_cm = np.zeros((classes.num_classes,) * 2, np.int64)
    dropped: list[int] = []
    crf_params = None
    if pm.crf.enabled:
        crf_params = {"n_iter": pm.crf.n_iter, "gauss_sxy": pm.crf.gauss_sxy, "gauss_compat": pm.crf.gauss_compat,
                      "bilateral_sxy": pm.crf.bilateral_sxy, "bilateral_srgb": pm.crf.bilateral_srgb,
                      "bilateral_compat": pm.crf.bilateral_compat}
    # One worker decodes crops in order (tiles are decoded once); CRFs run in a process pool.
    loader = DataLoader(_TagCrops(source, n2_tags, classes.num_classes), batch_size=None, num_workers=1)

    def predictions():
        tile_id, tile_probs = None, None
        with torch.inference_mode():
            for index, crop, tags in loader:
                image = torch.from_numpy(np.asarray(crop)).permute(2, 0, 1).float() / 255.0
                tags = torch.as_tensor(tags)
                probs = _crop_probabilities(model, layout, image, tags, cfg)
                if segmenter is not None:
                    tag = n2_tags[int(index)]
                    if tag.tile_id != tile_id:
                        tile_id = tag.tile_id
                        tile_probs = segmenter_probabilities(segmenter, source.image(tile_id), classes.num_classes, cfg)
                    probs = fuse_with_segmenter(probs, tile_probs[:, tag.y:tag.y + tag.h, tag.x:tag.x + tag.w],
                                                allowed_classes(tags, layout).numpy(), pm.segmenter_weight)
                yield int(index), np.asarray(crop), probs, crf_params

    cms = {name: np.zeros((classes.num_classes,) * 2, np.int64) for name in ("raw", "crf", "final")}
    labelled_px = total_px = 0
    current, acc = None, None

    def finish_tile(tile_id: str, acc: _TileAccumulator):
        nonlocal labelled_px, total_px, dropped
        count = np.maximum(acc.count, 1)[None]
        raw, crf = acc.raw / count, acc.crf / count
        # Confident regions: the CRF posterior is peaked almost everywhere, so confidence is read
        # from the pre-CRF probabilities, and pixels where the CRF changed the class stay unlabelled.
        final = crf.argmax(0).astype(np.uint8)
        final[(raw.max(0) <= pm.confidence_threshold) | (raw.argmax(0) != final)] = classes.ignore_index
        if tile_id in calibration_tiles:
            calibration_cm[:] += confusion_matrix(final, np.where(final == classes.ignore_index, classes.ignore_index,
                                                                  source.label(tile_id)),
                                                  classes.num_classes, classes.ignore_index)
            return
        if not dropped and pm.min_class_precision > 0 and calibration_cm.sum():
            dropped = unreliable_classes(calibration_cm, pm.min_class_precision)
            if dropped:
                log.info("pseudo masks: dropping %s (precision on the calibration tiles below %.2f)",
                         ", ".join(classes.names[c] for c in dropped), pm.min_class_precision)
            dropped = dropped or [-1]  # computed once; -1 marks "nothing to drop"
        final[np.isin(final, dropped)] = classes.ignore_index
        save_index_png(out_dir / f"{tile_id}.png", final, classes.palette)
        labelled_px += int((final != classes.ignore_index).sum())
        total_px += final.size
        if source.tile(tile_id).label_path is not None:
            gt = source.label(tile_id)
            cms["raw"] += confusion_matrix(raw.argmax(0), gt, classes.num_classes, classes.ignore_index)
            cms["crf"] += confusion_matrix(crf.argmax(0), gt, classes.num_classes, classes.ignore_index)
            gt_final = np.where(final == classes.ignore_index, classes.ignore_index, gt)
            cms["final"] += confusion_matrix(final, gt_final, classes.num_classes, classes.ignore_index)

    processes = min(max(1, pm.workers), multiprocessing.cpu_count()) if crf_params else 0
    pool = multiprocessing.get_context("spawn").Pool(processes) if processes > 1 else None
    try:
        results = pool.imap(_crf_job, predictions(), chunksize=2) if pool else map(_crf_job, predictions())
        for index, raw, crf in tqdm(results, total=len(n2_tags), desc="pseudo masks", dynamic_ncols=True):
            tag = n2_tags[index]
            if tag.tile_id != current:
                if acc is not None:
                    finish_tile(current, acc)
                height, width = source.image(tag.tile_id).shape[:2]
                current, acc = tag.tile_id, _TileAccumulator.empty(classes.num_classes, height, width)
            acc.add(tag, raw, crf)
        if acc is not None:
            finish_tile(current, acc)
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    quality = {"coverage": labelled_px / max(1, total_px), "tiles": len(split.tagged), "crf": pm.crf.enabled,
               "segmenter_weight": pm.segmenter_weight,
               "calibration_tiles": calibration,
               "calibration_precision": dict(zip(classes.names, class_precision(calibration_cm))),
               "dropped_classes": [classes.names[c] for c in dropped if c >= 0]}
    if cms["raw"].sum():
        stages = {name: segmentation_metrics(cm, classes.names, classes.in_mean) for name, cm in cms.items()}
        quality.update({f"miou_{name}": stages[name]["miou"] for name in stages})
        quality["per_class"] = {
            name: {f"{key}_{stage}": stages[stage]["per_class"][name][key] for stage in stages
                   for key in ("iou", "precision")}
            for name in classes.names}
    from wsseg.core.io import atomic_write_json

    atomic_write_json(out_dir / "pseudo_quality.json", quality)
    log.info("pseudo masks: coverage %.3f%s", quality["coverage"],
             "".join(f", mIoU {k[5:]} {quality[k]:.4f}" for k in ("miou_raw", "miou_crf", "miou_final") if k in quality))
    return quality


def class_precision(cm: np.ndarray) -> list[float | None]:
    """Precision per class (column-wise) of a confusion matrix; None for a class never predicted."""
    predicted = cm.sum(0)
    return [float(cm[c, c] / predicted[c]) if predicted[c] else None for c in range(len(cm))]


def unreliable_classes(calibration_cm: np.ndarray, min_precision: float) -> list[int]:
    """Classes whose confident pseudo labels on the calibration tiles are right less often than `min_precision`."""
    return [c for c, p in enumerate(class_precision(calibration_cm)) if p is not None and p < min_precision]


def pseudo_mask_samples(source: TileSource, split: Split, pm_dir: Path, count: int):
    """(tile, image, pseudo mask, ground truth) for the first `count` N2 tiles, for triptychs."""
    samples = []
    for tile_id in list(split.tagged)[:count]:
        gt = source.label(tile_id) if source.tile(tile_id).label_path is not None else None
        samples.append((tile_id, source.image(tile_id), read_index_png(pm_dir / f"{tile_id}.png"), gt))
    return samples
