"""Tasks i and ii as a chain of stages, each a plain function of the config and the run folder.

    prepare_data        dataset on disk → TileSource, split.json, crop_tags.json
    train_segmenter     N1 pixel labels (+ N2 pseudo masks in task ii) → segmenter → test metrics
    train_single_stage  N1 + N2 crop tags → single-stage weakly supervised model      (task ii)
    make_pseudo_masks   single-stage model → PAMR → CRF → thresholds → N2 pseudo masks (task ii)
    run_task            wires the stages; `all` runs both tasks on one split and compares them

A stage writes `done.json` when it finishes; a rerun of the chain with `resume` skips finished
stages and continues unfinished ones from their last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from wsseg.core.checkpoint import CheckpointError, load_checkpoint, unwrap
from wsseg.core.config import Config, ConfigError, config_to_dict, save_config
from wsseg.core.distributed import DistInfo, autocast_dtype, choose_device
from wsseg.core.evaluate import evaluate_tiles
from wsseg.core.io import atomic_write_json
from wsseg.core.metrics import class_pixel_counts, class_weights, majority_baseline_miou
from wsseg.core.report import colorize, write_comparison_report, write_report
from wsseg.core.train import build_optimizer, build_scheduler, fit, weighted_cross_entropy
from wsseg.datasets import build_source
from wsseg.datasets.base import DatasetError, TileSource, rescaled
from wsseg.datasets.crops import RandomCropDataset
from wsseg.datasets.splits import Split, format_split, load_split, make_split, official_vaihingen_split, save_split
from wsseg.datasets.tags import compute_crop_tags, load_crop_tags, save_crop_tags
from wsseg.models import build_segmenter

log = logging.getLogger("wsseg")


# ----------------------------------------------------------------------------------------- data
def get_source(cfg: Config) -> TileSource:
    return rescaled(_get_full_source(cfg), cfg.data.scale)


def _get_full_source(cfg: Config) -> TileSource:
    root = Path(cfg.data.root)
    if cfg.data.kind == "synthetic_vaihingen":
        from wsseg.datasets.synthetic_aerial import generate_synthetic_vaihingen

        marker = root / "synthetic.json"
        wanted = {"num_tiles": cfg.data.synthetic.num_tiles, "tile_px": list(cfg.data.synthetic.tile_px),
                  "seed": cfg.data.synthetic.seed}
        if not marker.exists() or json.loads(marker.read_text()) != wanted:
            log.info(f"generating the synthetic aerial dataset into {root} ({wanted})")
            generate_synthetic_vaihingen(root, num_tiles=wanted["num_tiles"], tile_px=tuple(wanted["tile_px"]),
                                         seed=wanted["seed"])
            atomic_write_json(marker, wanted)
        return build_source("vaihingen", root, **cfg.data.options)
    return build_source(cfg.data.kind, root, **cfg.data.options)


def make_split_for(cfg: Config, source: TileSource) -> Split:
    tile_ids = [t.tile_id for t in source.tiles]
    s = cfg.split
    if s.kind == "official":
        return official_vaihingen_split(tile_ids, n_labelled=s.n_labelled, n_val=s.n_val, seed=s.seed)
    return make_split(tile_ids, n_labelled=s.n_labelled, n_tagged=s.n_tagged, n_val=s.n_val, seed=s.seed,
                      n_test=s.n_test)


def get_crop_tags(cfg: Config, source: TileSource, split: Split, run_dir: Path):
    """Fixed-grid tags of the N1 and N2 tiles, computed once: all that training may see of N2."""
    path = run_dir / "crop_tags.json"
    tile_ids = list(split.labelled) + list(split.tagged)
    if not path.exists():
        tags = compute_crop_tags(source, tile_ids, cfg.weak.tag_crop_px, cfg.weak.tag_min_fraction)
        save_crop_tags(path, tags, cfg.weak.tag_crop_px, source.classes.names)
    return load_crop_tags(path, expected_tile_ids=tile_ids, num_classes=source.classes.num_classes)


# ------------------------------------------------------------------------------------ segmenter
class _WeightedCrops(Dataset):
    """Crops with a loss weight per sample: 1 for real labels, `pseudo_weight` for pseudo masks."""

    def __init__(self, crops: Dataset, weight: float):
        self.crops, self.weight = crops, weight

    def __len__(self):
        return len(self.crops)

    def __getitem__(self, index):
        image, mask = self.crops[index]
        return image, mask, torch.tensor(self.weight, dtype=torch.float32)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.crops, "set_epoch"):
            self.crops.set_epoch(epoch)


class _EpochConcat(ConcatDataset):
    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)


def segmenter_class_weights(cfg: Config, source: TileSource, tile_ids) -> torch.Tensor | None:
    setting = cfg.train.class_weights
    if isinstance(setting, list):
        if len(setting) != source.classes.num_classes:
            raise ValueError(f"train.class_weights has {len(setting)} values for {source.classes.num_classes} classes")
        return torch.tensor(setting, dtype=torch.float32)
    if setting == "none":
        return None
    counts = sum(class_pixel_counts(source.label(t), source.classes.num_classes, source.classes.ignore_index)
                 for t in tile_ids)
    return torch.as_tensor(class_weights(counts, mode=setting), dtype=torch.float32)


def build_model(cfg: Config, num_classes: int) -> torch.nn.Module:
    model = build_segmenter(cfg.model.name, num_classes, **cfg.model.options)
    if cfg.model.encoder_weights:
        from wsseg.models.encdec_unpool import load_vgg16_imagenet

        load_vgg16_imagenet(model, cfg.model.encoder_weights)
    return model


def train_segmenter(cfg: Config, source: TileSource, split: Split, stage_dir: Path, *, resume: bool,
                    pseudo_masks: dict[str, Path] | None = None, init_checkpoint: Path | None = None,
                    dist_info: DistInfo = DistInfo(), title: str = "Task i") -> dict:
    """Train a segmenter on N1 (plus N2 pseudo masks when given); evaluate the best one on test."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    device = choose_device(cfg.device, dist_info)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    classes = source.classes
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)

    model = build_model(cfg, classes.num_classes)
    if init_checkpoint is not None:
        # Task ii can start from task i's best model: the pseudo masks then add to what N1 taught.
        model.load_state_dict(load_checkpoint(init_checkpoint)["model"])
        log.info(f"{stage_dir.name}: initialised from {init_checkpoint}")
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    samples = cfg.train.iters_per_epoch * cfg.train.batch_size
    n_pseudo = int(round(samples * cfg.weak.pseudo_ratio)) if pseudo_masks else 0
    parts = [_WeightedCrops(RandomCropDataset(source, split.labelled, cfg.train.crop_px, samples - n_pseudo,
                                              augment=cfg.train.augment, seed=cfg.train.seed), 1.0)]
    if pseudo_masks:
        parts.append(_WeightedCrops(RandomCropDataset(source, split.tagged, cfg.train.crop_px, n_pseudo,
                                                      augment=cfg.train.augment, label_override=pseudo_masks,
                                                      seed=cfg.train.seed + 1), cfg.weak.pseudo_weight))
    dataset = _EpochConcat(parts)
    sampler = (torch.utils.data.distributed.DistributedSampler(dataset, seed=cfg.train.seed)
               if dist_info.enabled else None)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.train.workers, drop_last=True, pin_memory=device.type == "cuda",
                        persistent_workers=False)

    weights = segmenter_class_weights(cfg, source, split.labelled)
    if weights is not None:
        log.info("class weights: %s", ", ".join(f"{n} {w:.2f}" for n, w in zip(classes.names, weights.tolist())))

    def compute_loss(model, batch, epoch):
        images, masks, sample_weights = (t.to(device, non_blocking=True) for t in batch)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images)
        pixel_weights = sample_weights[:, None, None].expand_as(masks)
        return weighted_cross_entropy(logits, masks, weights, pixel_weights, classes.ignore_index), {}

    def validate(model, epoch):
        if not split.val or (epoch + 1) % cfg.eval.every_epochs and epoch + 1 != cfg.train.epochs:
            return {}
        shown = split.val[0]
        result = evaluate_tiles(unwrap(model), source, split.val, cfg.eval.window_px, cfg.eval.stride_px,
                                cfg.eval.batch_size, device, amp_dtype, keep_predictions=[shown], progress=False)
        metrics = result.metrics(classes)
        if writer is not None:
            # One validation tile as image | ground truth | prediction, to watch the masks form.
            panels = [source.image(shown), colorize(source.label(shown), classes.palette),
                      colorize(result.predictions[shown], classes.palette)]
            writer.add_image(f"{stage_dir.name}/val_{shown}", np.concatenate(panels, axis=1), epoch + 1,
                             dataformats="HWC")
        return {"miou": metrics["miou"], "mean_f1": metrics["mean_f1"], "overall_accuracy": metrics["overall_accuracy"]}

    optimizer = build_optimizer(unwrap(model).parameters(), cfg.train.optimizer, cfg.train.lr,
                                cfg.train.weight_decay, cfg.train.momentum)
    total_iters = cfg.train.epochs * len(loader)
    scheduler = build_scheduler(optimizer, cfg.train.schedule, total_iters, len(loader), cfg.train.poly_power,
                                cfg.train.step_epochs, cfg.train.step_gamma)
    writer = _summary_writer(stage_dir, dist_info)
    history = fit(model=model, loader=loader, optimizer=optimizer, scheduler=scheduler, compute_loss=compute_loss,
                  epochs=cfg.train.epochs, run_dir=stage_dir, device=device, amp_dtype=amp_dtype,
                  validate=validate if split.val else None, config=config_to_dict(cfg), resume=resume,
                  dist_info=dist_info, writer=writer, desc=stage_dir.name, log=log.info)

    if cfg.weak.finetune_epochs and pseudo_masks:
        history += _finetune_on_labels(cfg, source, split, stage_dir, model, compute_loss, validate, device,
                                       amp_dtype, resume, dist_info, writer)
    if writer is not None:
        writer.close()
    if not dist_info.is_main:
        return {}
    return evaluate_checkpoint(cfg, source, split, stage_dir, stage_dir / "best.pt", history, title=title,
                               train_tile_ids=split.labelled)


def _finetune_on_labels(cfg, source, split, stage_dir, model, compute_loss, validate, device, amp_dtype, resume,
                        dist_info, writer) -> list[dict]:
    """Optional last epochs on N1 pixel labels only, starting from the best mixed-training weights."""
    ft_dir = stage_dir / "finetune"
    state = load_checkpoint(stage_dir / "best.pt", map_location=device)
    unwrap(model).load_state_dict(state["model"])
    samples = cfg.train.iters_per_epoch * cfg.train.batch_size
    dataset = _WeightedCrops(RandomCropDataset(source, split.labelled, cfg.train.crop_px, samples,
                                               augment=cfg.train.augment, seed=cfg.train.seed + 2), 1.0)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, num_workers=cfg.train.workers,
                        drop_last=True)
    optimizer = build_optimizer(unwrap(model).parameters(), cfg.train.optimizer, cfg.train.lr * 0.1,
                                cfg.train.weight_decay, cfg.train.momentum)
    scheduler = build_scheduler(optimizer, "constant", 1, len(loader))
    history = fit(model=model, loader=loader, optimizer=optimizer, scheduler=scheduler, compute_loss=compute_loss,
                  epochs=cfg.weak.finetune_epochs, run_dir=ft_dir, device=device, amp_dtype=amp_dtype,
                  validate=validate, config=config_to_dict(cfg), resume=resume, dist_info=dist_info, writer=writer,
                  desc="finetune", log=log.info)
    # The fine-tuned model competes with the mixed one on validation: keep whichever is better.
    mixed = state["best_score"]
    tuned = load_checkpoint(ft_dir / "best.pt")["best_score"]
    if tuned > mixed:
        (ft_dir / "best.pt").replace(stage_dir / "best.pt")
    return history


def _summary_writer(stage_dir: Path, dist_info: DistInfo):
    if not dist_info.is_main:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(stage_dir / "tb"))


def evaluate_checkpoint(cfg: Config, source: TileSource, split: Split, out_dir: Path, checkpoint: Path,
                        history: list[dict] | None = None, title: str = "Evaluation",
                        train_tile_ids=None) -> dict:
    """Whole-tile sliding-window evaluation of a checkpoint on the test tiles, with the full report."""
    device = choose_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    classes = source.classes
    state = load_checkpoint(checkpoint, map_location=device)
    model = load_segmenter(cfg, classes.num_classes, state, device)
    shown = list(split.test)[: cfg.eval.num_triptychs]
    log.info(f"evaluating {checkpoint} (epoch {state['epoch'] + 1}) on {len(split.test)} test tiles")
    result = evaluate_tiles(model, source, split.test, cfg.eval.window_px, cfg.eval.stride_px, cfg.eval.batch_size,
                            device, amp_dtype, keep_predictions=shown)
    metrics = result.metrics(classes)
    train_ids = train_tile_ids if train_tile_ids is not None else split.labelled
    train_counts = sum(class_pixel_counts(source.label(t), classes.num_classes, classes.ignore_index)
                       for t in train_ids)
    metrics["baseline_majority_miou"] = majority_baseline_miou(train_counts, result.cm, classes.names, classes.in_mean)
    metrics["checkpoint"] = {"path": checkpoint.name, "epoch": state["epoch"] + 1}
    samples = [(t, source.image(t), source.label(t), result.predictions[t]) for t in shown]
    write_report(out_dir, metrics, classes.names, classes.palette, history or state.get("history", []), samples,
                 title=title)
    return metrics


def load_segmenter(cfg: Config, num_classes: int, checkpoint: Path | dict, device: torch.device) -> torch.nn.Module:
    """The configured segmenter with a checkpoint's weights (a path or a loaded checkpoint), in eval mode."""
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint, map_location=device)
    model = build_segmenter(cfg.model.name, num_classes, **_without_pretrained(cfg.model.options))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def _without_pretrained(options: dict) -> dict:
    # The checkpoint holds every weight: skip loading ImageNet weights again when rebuilding.
    return {k: (False if k == "pretrained" else v) for k, v in options.items()}


# ------------------------------------------------------------------------------------- pipeline
def _stage_done(stage_dir: Path) -> dict | None:
    done = stage_dir / "done.json"
    return json.loads(done.read_text()) if done.exists() else None


def _finish_stage(stage_dir: Path, result: dict) -> dict:
    atomic_write_json(stage_dir / "done.json", result)
    return result


def run_task_i(cfg: Config, source: TileSource, split: Split, run_dir: Path, resume: bool,
               dist_info: DistInfo = DistInfo()) -> dict:
    stage_dir = run_dir / "task_i"
    if (done := _stage_done(stage_dir)) is not None:
        log.info(f"task i already finished in {stage_dir}: mIoU {done['miou']:.4f}")
        return done
    metrics = train_segmenter(cfg, source, split, stage_dir, resume=resume, dist_info=dist_info,
                              title="Task i: pixel labels only (N1)")
    log.info(f"task i: test mIoU {metrics.get('miou', float('nan')):.4f}")
    return _finish_stage(stage_dir, metrics) if dist_info.is_main else metrics


def run_task_ii(cfg: Config, source: TileSource, split: Split, run_dir: Path, resume: bool,
                dist_info: DistInfo = DistInfo()) -> tuple[dict, dict]:
    from wsseg.pseudo_labels.generate import make_pseudo_masks, train_single_stage

    crop_tags = get_crop_tags(cfg, source, split, run_dir)
    ss_dir = run_dir / "single_stage"
    if _stage_done(ss_dir) is None:
        train_single_stage(cfg, source, crop_tags, ss_dir, resume=resume, dist_info=dist_info)
        _finish_stage(ss_dir, {"checkpoint": "last.pt"})
    task_i_best = run_dir / "task_i" / "best.pt"
    if (cfg.weak.pseudo.segmenter_weight > 0 or cfg.weak.init_from_task_i) and _stage_done(run_dir / "task_i") is None:
        log.info("task ii uses task i's segmenter (weak.pseudo.segmenter_weight or weak.init_from_task_i): "
                 "running task i first")
        run_task_i(cfg, source, split, run_dir, resume, dist_info)
    pm_dir = run_dir / "pseudo_masks"
    if (quality := _stage_done(pm_dir)) is None:
        quality = make_pseudo_masks(cfg, source, split, crop_tags, ss_dir / "last.pt", pm_dir,
                                    segmenter_checkpoint=task_i_best if cfg.weak.pseudo.segmenter_weight > 0 else None)
        _finish_stage(pm_dir, quality)
    pseudo_masks = {t: pm_dir / f"{t}.png" for t in split.tagged}
    stage_dir = run_dir / "task_ii"
    if (done := _stage_done(stage_dir)) is not None:
        log.info(f"task ii already finished in {stage_dir}: mIoU {done['miou']:.4f}")
        return done, quality
    init = task_i_best if cfg.weak.init_from_task_i else None
    metrics = train_segmenter(cfg, source, split, stage_dir, resume=resume, pseudo_masks=pseudo_masks,
                              init_checkpoint=init, dist_info=dist_info,
                              title="Task ii: N1 pixel labels + N2 crop tags")
    log.info(f"task ii: test mIoU {metrics.get('miou', float('nan')):.4f}")
    return (_finish_stage(stage_dir, metrics) if dist_info.is_main else metrics), quality


def verify_tiles(source: TileSource, tile_ids) -> None:
    """Decode every image and label once before training, so a truncated or mismatched file is
    reported up front, naming the file, and not hours later from inside a DataLoader worker."""
    from tqdm import tqdm

    for tile_id in tqdm(list(tile_ids), desc="checking tiles", leave=False, dynamic_ncols=True):
        image = source.image(tile_id)
        tile = source.tile(tile_id)
        for eroded, path in ((False, tile.label_path), (True, tile.eroded_label_path)):
            if path is not None and source.label(tile_id, eroded=eroded).shape != image.shape[:2]:
                raise DatasetError(f"{path}: mask size differs from its image {tile.image_path}")


def run_task(cfg: Config, task: str, run_dir: Path, resume: bool = False,
             dist_info: DistInfo = DistInfo()) -> dict:
    """Run task `i`, `ii` or `all` into `run_dir`; returns the metrics (or the comparison)."""
    if not 0.0 <= cfg.weak.pseudo.segmenter_weight <= 1.0:
        raise ConfigError(f"weak.pseudo.segmenter_weight must be in [0, 1], got {cfg.weak.pseudo.segmenter_weight}")
    if (run_dir / "config.yaml").exists() and not resume:
        raise CheckpointError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    source = get_source(cfg)
    split_path = run_dir / "split.json"
    # A resumed run keeps the split it started with, whatever the config says now.
    split = load_split(split_path) if split_path.exists() else make_split_for(cfg, source)
    verify_tiles(source, [*split.labelled, *split.tagged, *split.val, *split.test])
    if dist_info.is_main:
        save_config(cfg, run_dir / "config.yaml")
        save_split(split_path, split)
    log.info("split (%s):\n%s", split_path, format_split(split))
    if task == "i":
        return run_task_i(cfg, source, split, run_dir, resume, dist_info)
    if task == "ii":
        return run_task_ii(cfg, source, split, run_dir, resume, dist_info)[0]
    if task != "all":
        raise ValueError(f"unknown task {task!r} (i, ii, all)")
    task_i = run_task_i(cfg, source, split, run_dir, resume, dist_info)
    task_ii, quality = run_task_ii(cfg, source, split, run_dir, resume, dist_info)
    if not dist_info.is_main:
        return {}
    from wsseg.pseudo_labels.generate import pseudo_mask_samples

    samples = pseudo_mask_samples(source, split, run_dir / "pseudo_masks", cfg.eval.num_triptychs)
    return write_comparison_report(run_dir, task_i, task_ii, quality, source.classes.names, source.classes.palette,
                                   samples)


def run_split_seeds(cfg: Config, seeds: list[int], run_dir: Path, resume: bool = False) -> dict:
    """Repeat `--task all` over several split seeds and report mean ± std per class."""
    from dataclasses import replace

    from wsseg.core.report import aggregate_seeds, write_seed_summary

    comparisons = []
    for seed in seeds:
        seed_cfg = replace(cfg, split=replace(cfg.split, seed=seed))
        comparisons.append(run_task(seed_cfg, "all", run_dir / f"split_seed_{seed}", resume))
    summary = aggregate_seeds(comparisons)
    write_seed_summary(run_dir, summary, seeds)
    return summary
