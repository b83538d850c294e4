"""Data preparation, the first stage of every run: the dataset, its split, the crop tags.

`prepare_run` turns a config and a run folder into a `Run`: the one object every later stage
takes, so that the config, the data, the split and the process group travel together and none
of them can be left behind on the way down the chain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from wsseg.core.checkpoint import CheckpointError
from wsseg.core.config import Config, ConfigError, config_to_dict, save_config
from wsseg.core.distributed import DistInfo, barrier, main_process_first
from wsseg.core.stage import Stage
from wsseg.datasets import build_source
from wsseg.datasets.base import ClassSpec, DatasetError, TileSource, rescaled
from wsseg.datasets.splits import (Split, format_split, group_by_part, load_split, make_split, official_split,
                                   save_split)
from wsseg.datasets.tags import CropTag, compute_crop_tags, load_crop_tags, save_crop_tags
from wsseg.models.single_stage import ClassLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """One run: its config, dataset, split and folder, whether it resumes, and its process group."""

    cfg: Config
    source: TileSource
    split: Split
    run_dir: Path
    resume: bool = False
    dist: DistInfo = DistInfo()

    def stage(self, stage_dir: Path, precision: str, channels_last: bool) -> Stage:
        """The training skeleton for a stage of this run, in `stage_dir`; its checkpoints carry the
        dataset's classes, so that a model is usable without the data it was trained on."""
        return Stage(stage_dir, device=self.cfg.device, precision=precision, channels_last=channels_last,
                     seed=self.cfg.train.seed, workers=self.cfg.train.workers, dist=self.dist,
                     config=config_to_dict(self.cfg), resume=self.resume, sync_bn=self.cfg.train.sync_bn,
                     checkpoint_extras={"classes": class_record(self.source.classes)})


def class_record(classes: ClassSpec) -> dict:
    """`classes` as plain lists, as checkpoints and model files store them."""
    return {"names": list(classes.names), "palette": [list(c) for c in classes.palette],
            "in_mean": list(classes.in_mean), "ignore_index": int(classes.ignore_index)}


def load_source(cfg: Config) -> TileSource:
    """The configured dataset (`data.kind` at `data.root` with `data.options`), at `data.scale`."""
    return rescaled(build_source(cfg.data.kind, Path(cfg.data.root), **cfg.data.options), cfg.data.scale)


def make_split_for(cfg: Config, source: TileSource) -> Split:
    """The split `cfg.split` asks for: seeded over all tiles, or official within the dataset's parts."""
    s = cfg.split
    # Tags and scores both come from ground truth, so a tile without it can be in no part of a split.
    unlabelled = [t.tile_id for t in source.tiles if t.label_path is None]
    if s.kind == "official":
        return official_split(group_by_part(source.tiles), n_labelled=s.n_labelled, n_tagged=s.n_tagged,
                              n_val=s.n_val, seed=s.seed, n_test=s.n_test, without_labels=unlabelled,
                              dataset=source.name)
    if unlabelled:
        log.info("%d tiles of %r have no ground truth and are left out of the split", len(unlabelled), source.name)
    tile_ids = [t.tile_id for t in source.tiles if t.label_path is not None]
    return make_split(tile_ids, n_labelled=s.n_labelled, n_tagged=s.n_tagged, n_val=s.n_val, seed=s.seed,
                      n_test=s.n_test)


def verify_tiles(source: TileSource, tile_ids, progress: bool = True) -> None:
    """Decode every image and label once before training, so a truncated or mismatched file is
    reported up front, naming the file, and not hours later from inside a DataLoader worker."""
    for tile_id in tqdm(list(tile_ids), desc="checking tiles", leave=False, dynamic_ncols=True, disable=not progress):
        image = source.image(tile_id)
        tile = source.tile(tile_id)
        for eroded, path in ((False, tile.label_path), (True, tile.eroded_label_path)):
            if path is not None and source.label(tile_id, eroded=eroded).shape != image.shape[:2]:
                raise DatasetError(f"{path}: mask size differs from its image {tile.image_path}")


def class_layout(cfg: Config, source: TileSource) -> ClassLayout:
    """Which dataset class the single-stage model's constant channel plays (`weak.single_stage`)."""
    ss = cfg.weak.single_stage
    if ss.background == "learned":
        return ClassLayout(source.classes.num_classes, None)
    if ss.background_class not in source.classes.names:
        raise ConfigError(f"weak.single_stage.background_class {ss.background_class!r} is not a class of "
                          f"{source.name!r} ({', '.join(source.classes.names)}); name one, or set "
                          f"weak.single_stage.background: learned")
    return ClassLayout(source.classes.num_classes, source.classes.names.index(ss.background_class))


def check_config(cfg: Config, source: TileSource | None = None, weak: bool = True) -> None:
    """Settings that are valid one by one but not with each other or with the dataset, caught
    before anything trains: a wrong class name must not surface after task i has trained."""
    if not 0.0 <= cfg.weak.pseudo.segmenter_weight <= 1.0:
        raise ConfigError(f"weak.pseudo.segmenter_weight must be in [0, 1], got {cfg.weak.pseudo.segmenter_weight}")
    if not 0.0 <= cfg.weak.pseudo_ratio < 1.0:
        raise ConfigError(f"weak.pseudo_ratio must be in [0, 1), got {cfg.weak.pseudo_ratio}")
    if not 0.0 <= cfg.weak.single_stage.reject_background_below_recall <= 1.0:
        raise ConfigError("weak.single_stage.reject_background_below_recall must be in [0, 1], got "
                          f"{cfg.weak.single_stage.reject_background_below_recall}")
    if cfg.weak.rounds < 1:
        raise ConfigError(f"weak.rounds must be at least 1, got {cfg.weak.rounds}")
    if cfg.weak.rounds > 1 and cfg.weak.pseudo.segmenter_weight == 0:
        raise ConfigError(f"weak.rounds is {cfg.weak.rounds}, but later rounds differ from the first only by the "
                          "segmenter fused into the pseudo masks: set weak.pseudo.segmenter_weight > 0")
    for key in ("segmenter_tag_loss", "consistency_weight"):
        if getattr(cfg.weak, key) < 0.0:
            raise ConfigError(f"weak.{key} must be at least 0 (0 = off), got {getattr(cfg.weak, key)}")
    if not 0.0 < cfg.weak.consistency_threshold <= 1.0:
        raise ConfigError(f"weak.consistency_threshold must be in (0, 1], got {cfg.weak.consistency_threshold}")
    if source is None:
        return
    names = source.classes.names
    if isinstance(cfg.train.class_weights, list) and len(cfg.train.class_weights) != len(names):
        raise ConfigError(f"train.class_weights has {len(cfg.train.class_weights)} values for the "
                          f"{len(names)} classes of {source.name!r} ({', '.join(names)})")
    if weak:
        class_layout(cfg, source)


def prepare_run(cfg: Config, run_dir: Path, resume: bool = False, dist: DistInfo = DistInfo(),
                weak: bool = True) -> Run:
    """Check the config, load and verify the data, fix the split; record config and split in `run_dir`.

    `weak`: the run has a weak stage (task ii), whose settings are then checked against the data."""
    check_config(cfg)
    holds_a_run = (run_dir / "config.yaml").exists()
    # Every process looks before rank 0 writes config.yaml, or a slower one would take this run for an old one.
    barrier(dist)
    if holds_a_run and not resume:
        raise CheckpointError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    # Rank 0 first: it generates a synthetic dataset and writes the split; the others read them.
    with main_process_first(dist):
        source = load_source(cfg)
        check_config(cfg, source, weak)
        split_path = run_dir / "split.json"
        # A resumed run keeps the split it started with, whatever the config says now.
        split = load_split(split_path) if split_path.exists() else make_split_for(cfg, source)
        verify_tiles(source, [*split.labelled, *split.tagged, *split.val, *split.test], progress=dist.is_main)
        if dist.is_main:
            save_config(cfg, run_dir / "config.yaml")
            save_split(split_path, split)
    log.info("split (%s):\n%s", split_path, format_split(split))
    return Run(cfg, source, split, run_dir, resume, dist)


def tag_grid_px(cfg: Config) -> int | None:
    """The grid size of the crop tags: `weak.tag_crop_px`, or None for image-level tags (`weak.tags`)."""
    return cfg.weak.tag_crop_px if cfg.weak.tags == "grid" else None


def crop_tags_of(run: Run) -> list[CropTag]:
    """Fixed-grid (or image-level) tags of the N1 and N2 tiles, computed once: all that training
    may see of N2. A resumed run must keep the `weak.tags` mode its tags were made in."""
    cfg, source, split = run.cfg, run.source, run.split
    path = run.run_dir / "crop_tags.json"
    tile_ids = list(split.labelled) + list(split.tagged)
    if run.dist.is_main and not path.exists():
        tags = compute_crop_tags(source, tile_ids, tag_grid_px(cfg), cfg.weak.tag_min_fraction)
        save_crop_tags(path, tags, tag_grid_px(cfg), source.classes.names)
    barrier(run.dist)  # rank 0 writes the file, then every process reads it
    return load_crop_tags(path, expected_tile_ids=tile_ids, num_classes=source.classes.num_classes,
                          expected_mode=cfg.weak.tags)
