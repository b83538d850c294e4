"""Data preparation, the first stage of every run: the dataset, its split, the crop tags.

`prepare_run` turns a config and a run folder into a `Run`: the one object every later stage
takes, so that the config, the data, the split and the process group travel together and none
of them can be left behind on the way down the chain. It checks the config first
(`pipeline.config_checks`); `wsseg check-data` (`pipeline.data_check`) reports all it would refuse.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from wsseg.core.checkpoint import CheckpointError
from wsseg.core.determinism import use_deterministic_algorithms
from wsseg.core.distributed import DistInfo, barrier, main_process_first
from wsseg.core.io import atomic_write_json
from wsseg.core.progress import progress_bar
from wsseg.core.provenance import describe, record_run_start
from wsseg.core.stage import Stage
from wsseg.core.typed import ConfigError
from wsseg.datasets import build_source
from wsseg.datasets.base import (ClassSpec, DataOptionError, DataProblem, DataProblemsError, DatasetError, TileSource,
                                 printable, rescaled)
from wsseg.datasets.check import check_split, check_tiles
from wsseg.datasets.splits import (Split, format_split, group_by_part, load_split, make_split, official_split,
                                   save_split, sort_tile_ids)
from wsseg.datasets.tags import CropTag, compute_crop_tags, load_crop_tags, save_crop_tags, tags_title
from wsseg.datasets.user_tags import read_user_tags
from wsseg.pipeline.config import Config, config_to_dict
from wsseg.pipeline.config_checks import check_config, check_weight_files
from wsseg.pipeline.config_files import save_config

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
    # Tiles left out for bad files (`data.skip_bad_files`), listed in the run's skipped_files.json.
    skipped_tiles: tuple[str, ...] = ()

    @property
    def tags_title(self) -> str:
        """"crop tags" or "image tags" (`weak.tags`): what task ii's report titles say N2 carries."""
        return tags_title(self.cfg.weak.tags)

    def stage(self, stage_dir: Path, precision: str, channels_last: bool, workers: int | None = None) -> Stage:
        """The training skeleton for a stage of this run, in `stage_dir`; its checkpoints carry the
        dataset's classes, so that a model is usable without the data it was trained on.
        `workers`: DataLoader processes, default `train.workers` (0 for data already in memory)."""
        return Stage(stage_dir, device=self.cfg.device, precision=precision, channels_last=channels_last,
                     seed=self.cfg.train.seed, workers=self.cfg.train.workers if workers is None else workers,
                     dist=self.dist,
                     config=config_to_dict(self.cfg), resume=self.resume, sync_bn=self.cfg.train.sync_bn,
                     checkpoint_extras={"classes": class_record(self.source.classes)},
                     on_nonfinite=self.cfg.train.on_nonfinite, precision_cache_dir=self.run_dir,
                     compile=self.cfg.train.compile)


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
    # Scores, and tags unless a tags file gives them, come from ground truth: a tile without it
    # can be in no part of a split, except N2 when the user's tags file names it.
    unlabelled = [t.tile_id for t in source.tiles if t.label_path is None]
    if s.kind == "official":
        split = official_split(group_by_part(source.tiles), n_labelled=s.n_labelled, n_tagged=s.n_tagged,
                               n_val=s.n_val, seed=s.seed, n_test=s.n_test, without_labels=unlabelled,
                               dataset=source.name)
    else:
        tile_ids = [t.tile_id for t in source.tiles if t.label_path is not None]
        split = make_split(tile_ids, n_labelled=s.n_labelled, n_tagged=s.n_tagged, n_val=s.n_val, seed=s.seed,
                           n_test=s.n_test)
    tag_only = []
    if cfg.weak.tags_file and unlabelled:
        tagged_in_file = read_user_tags(cfg.weak.tags_file, source, cfg.weak.tags, cfg.data.scale)
        tag_only = [t for t in unlabelled if t in tagged_in_file and source.tile(t).part in (None, "train")]
        split = dataclasses.replace(split, tagged=sort_tile_ids([*split.tagged, *tag_only])).check()
    left_out = len(unlabelled) - len(tag_only)
    if left_out and s.kind != "official":
        log.info("%d tiles of %r have no ground truth%s and are left out of the split", left_out, source.name,
                 " nor tags" if cfg.weak.tags_file else "")
    return split


SKIPPED_FILES = "skipped_files.json"
SKIP_HINT = "`wsseg check-data` lists every problem; data.skip_bad_files: true trains without the tiles at fault"


def checking_bar(enabled: bool):
    return lambda tile_ids: progress_bar(tile_ids, enabled=enabled, desc="checking tiles", unit="tile", leave=False)


def listed_source(cfg: Config) -> tuple[TileSource, list[DataProblem]]:
    """The configured dataset, and the problems its loader found listing it (a missing or
    mis-sized mask), whose tiles it leaves out; a layout it cannot read at all raises."""
    try:
        return load_source(cfg), []
    except DataProblemsError as error:
        if error.usable is None:
            raise
        return rescaled(error.usable, cfg.data.scale), error.problems


def refuse_or_skip(cfg: Config, problems: list[DataProblem], split: Split, source: TileSource, run_dir: Path,
                   is_main: bool = True) -> tuple[Split, TileSource, tuple[str, ...]]:
    """Training's answer to the problems of its data: warnings are logged; a blocking problem
    refuses the run, listing all of them, unless `data.skip_bad_files`, which takes the tiles at
    fault out of the split and the dataset (logged, and listed in the run's skipped_files.json).
    A problem of no single tile (a split that cannot be drawn) refuses the run in any case."""
    for warning in (p for p in problems if not p.blocking):
        log.warning("warning: %s", warning.line())
    blocking = [p for p in problems if p.blocking]
    if not blocking:
        return split, source, ()
    if not cfg.data.skip_bad_files or any(p.tile_id is None for p in blocking):
        raise DataProblemsError(blocking, hint="" if cfg.data.skip_bad_files else SKIP_HINT)
    bad = sorted({p.tile_id for p in blocking})
    log.warning("data.skip_bad_files: %d tile(s) left out of the run for bad files (%s):", len(bad),
                run_dir / SKIPPED_FILES)
    for problem in blocking:
        log.warning("  %s", problem.line())
    kept = {part: [t for t in getattr(split, part) if t not in bad] for part in ("labelled", "tagged", "val", "test")}
    split = Split(**kept, seed=split.seed, kind=split.kind, info=split.info).check("split without the skipped tiles")
    source = dataclasses.replace(source, tiles=[t for t in source.tiles if t.tile_id not in bad])
    if is_main:  # one process of a distributed run writes the record
        atomic_write_json(run_dir / SKIPPED_FILES, {"skipped_tiles": [printable(t) for t in bad],
                                                    "problems": [p.as_dict() for p in blocking]})
    return split, source, tuple(bad)


def prepare_run(cfg: Config, run_dir: Path, resume: bool = False, dist: DistInfo = DistInfo(),
                weak: bool = True) -> Run:
    """Check the config, load and verify the data, fix the split; record config, split and where
    the run came from (`run_info.json`, `core.provenance`) in `run_dir`.

    `weak`: the run has a weak stage (task ii), whose settings are then checked against the data.
    The data is checked as `wsseg check-data` checks it, on the split's tiles (`refuse_or_skip`)."""
    check_config(cfg)
    holds_a_run = (run_dir / "config.yaml").exists()
    # Every process looks before rank 0 writes config.yaml, or a slower one would take this run for an old one.
    barrier(dist)
    if holds_a_run and not resume:
        raise CheckpointError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    # Rank 0 first: it generates a synthetic dataset and writes the split; the others read them.
    with main_process_first(dist):
        source, problems = listed_source(cfg)
        check_config(cfg, source, weak)
        check_weight_files(cfg, weak)
        # Before any model is built or reaches a GPU: it decides which kernels every stage uses.
        use_deterministic_algorithms(cfg.train.deterministic)
        if cfg.train.deterministic:
            log.info("train.deterministic: deterministic kernels only (torch.use_deterministic_algorithms, cuDNN "
                     "without autotuning)")
        split_path = run_dir / "split.json"
        # A resumed run keeps the split it started with, whatever the config says now.
        if split_path.exists():
            split = load_split(split_path)
            problems += check_split(split, source, str(split_path))
        else:
            try:
                split = make_split_for(cfg, source)
            except DatasetError as error:
                # A bad setting is no fault of the tiles.
                if not problems or isinstance(error, (ConfigError, DataOptionError)):
                    raise
                # Too few tiles left because of the problems: report those, not only the count.
                raise DataProblemsError([*problems, DataProblem("split", str(error), "fix the tiles above")],
                                        hint=SKIP_HINT) from None
        known = {t.tile_id for t in source.tiles}
        problems += check_tiles(source, [t for t in split.all_tiles() if t in known], checking_bar(dist.is_main))
        split, source, skipped = refuse_or_skip(cfg, problems, split, source, run_dir, dist.is_main)
        if dist.is_main:
            save_config(cfg, run_dir / "config.yaml")
            save_split(split_path, split)
            # Versions, commit, command, machine: what the config cannot say; a resume is appended.
            info = record_run_start(run_dir, resume, dist.world_size)
            log.info("run_info.json: %s", describe(info["resumed"][-1] if info["resumed"] else info))
    log.info("split (%s):\n%s", split_path, format_split(split))
    return Run(cfg, source, split, run_dir, resume, dist, skipped)


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
        if cfg.weak.tags_file:
            # N1's tags from its masks, as always; N2's are the user's, and every N2 image needs some.
            tags = compute_crop_tags(source, split.labelled, tag_grid_px(cfg))
            given = read_user_tags(cfg.weak.tags_file, source, cfg.weak.tags, cfg.data.scale)
            untagged = [t for t in split.tagged if t not in given]
            if untagged:
                raise DatasetError(f"weak.tags_file {cfg.weak.tags_file}: no tags for {len(untagged)} N2 image(s) of "
                                   f"the split, e.g. {', '.join(untagged[:3])}")
            tags += [tag for tile_id in split.tagged for tag in given[tile_id]]
        else:
            tags = compute_crop_tags(source, tile_ids, tag_grid_px(cfg))
        save_crop_tags(path, tags, tag_grid_px(cfg), source.classes.names)
    barrier(run.dist)  # rank 0 writes the file, then every process reads it
    return load_crop_tags(path, expected_tile_ids=tile_ids, num_classes=source.classes.num_classes,
                          expected_mode=cfg.weak.tags, class_names=source.classes.names)
