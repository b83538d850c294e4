"""The segmenter registry: one `SegmenterSpec` per segmenter, declared beside its model.

A spec holds everything the stages need to know about a segmenter without building it: the
constructor, which weights are its ImageNet-initialised encoder (their learning rate is scaled,
as mmsegmentation's `lr_mult`), which are its classifier (learnt afresh by `--reset-head`), the
least input side its strides take, how VGG ImageNet weights go in, and whether its forward takes
`perturb_from` (UniMatch's feature perturbation). Each model file registers its own specs with
`register_segmenter`, as timm's `@register_model` does, so adding a segmenter touches one file.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from torch import nn


@dataclass(frozen=True)
class SegmenterSpec:
    """What wsseg knows of segmenter `name` (see the module docstring).

    `min_input_px`: an int, or a function of the constructor options (a U-Net's depth sets it).
    `vgg_loader(model, weights)`: loads a torchvision VGG state dict into the encoder, or None.
    `timm_encoder`: the encoder is any timm model (`options.encoder`, `options.pretrained`).
    `perturbable`: forward takes `perturb_from` (models.feature_perturbation): every encoder
    feature is at hand before the decoder starts."""

    name: str
    constructor: Callable[..., nn.Module]
    encoder_prefixes: tuple[str, ...]
    head_prefixes: tuple[str, ...]
    min_input_px: Union[int, Callable[[dict], int]] = 1
    vgg_loader: Callable[[nn.Module, object], nn.Module] | None = None
    timm_encoder: bool = False
    perturbable: bool = False


_SPECS: dict[str, SegmenterSpec] = {}


def register_segmenter(spec: SegmenterSpec) -> SegmenterSpec:
    """Add `spec` to the registry; a name registered twice is a programming error."""
    if spec.name in _SPECS:
        raise ValueError(f"segmenter {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec
    return spec


def segmenter_names() -> tuple[str, ...]:
    return tuple(sorted(_SPECS))


def segmenter_spec(name: str) -> SegmenterSpec:
    """The spec of segmenter `name`; an unknown name is a ValueError listing the known ones."""
    if name not in _SPECS:
        raise ValueError(f"unknown segmenter {name!r}; known: {', '.join(segmenter_names())}")
    return _SPECS[name]


def build_segmenter(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build the segmenter registered as `name`; unknown names and arguments are errors."""
    constructor = segmenter_spec(name).constructor
    accepted = [p for p in inspect.signature(constructor).parameters if p != "num_classes"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"segmenter {name!r} has no argument(s) {', '.join(unknown)}; "
                        f"it accepts: {', '.join(accepted)}")
    return constructor(num_classes=num_classes, **kwargs)


def timm_segmenters() -> tuple[str, ...]:
    """Segmenters whose encoder is any timm model (`options.encoder`)."""
    return tuple(name for name in segmenter_names() if _SPECS[name].timm_encoder)


def timm_encoder_of(name: str, options: dict) -> tuple[str, bool] | None:
    """(timm model name, whether its ImageNet weights load) of segmenter `name` built with
    `options`; None for a segmenter without a timm encoder."""
    spec = segmenter_spec(name)
    if not spec.timm_encoder:
        return None
    defaults = inspect.signature(spec.constructor).parameters
    return (options.get("encoder", defaults["encoder"].default),
            bool(options.get("pretrained", defaults["pretrained"].default)))


def vgg_encoder_segmenters() -> tuple[str, ...]:
    """Segmenters that take ImageNet VGG weights (`model.encoder_weights`)."""
    return tuple(name for name in segmenter_names() if _SPECS[name].vgg_loader is not None)


def load_encoder_weights(name: str, model: nn.Module, weights) -> nn.Module:
    """Load ImageNet VGG weights (a local state dict file) into the encoder of segmenter `name`."""
    loader = segmenter_spec(name).vgg_loader
    if loader is None:
        raise ValueError(f"model.encoder_weights: segmenter {name!r} has no VGG encoder to load them into "
                         f"(those that have: {', '.join(vgg_encoder_segmenters())})")
    return loader(model, weights)


def perturbable_segmenters() -> tuple[str, ...]:
    return tuple(name for name in segmenter_names() if _SPECS[name].perturbable)


def supports_feature_perturbation(name: str) -> bool:
    return segmenter_spec(name).perturbable


def min_input_px(name: str, options: dict) -> int:
    """The least side of an input segmenter `name` built with `options` takes (its docstring's
    "any H, W ≥ ..."): a window or crop below it fails inside the network's pooling."""
    least = segmenter_spec(name).min_input_px
    return least(options) if callable(least) else least


def untrained_options(options: dict) -> dict:
    """Constructor `options` with ImageNet loading off (`pretrained`), for a segmenter whose every
    weight then comes from a checkpoint: the ImageNet weights are not loaded to be overwritten."""
    return {k: (False if k == "pretrained" else v) for k, v in options.items()}


def encoder_prefixes(name: str) -> tuple[str, ...]:
    """State-dict key prefixes of segmenter `name`'s ImageNet-initialised encoder."""
    return segmenter_spec(name).encoder_prefixes


def head_prefixes(name: str) -> tuple[str, ...]:
    """State-dict key prefixes of segmenter `name`'s classifier: the layers whose output channels
    are the classes, which `--reset-head` leaves freshly initialised when a model learns new classes."""
    return segmenter_spec(name).head_prefixes


def parameter_groups(name: str, model: nn.Module, encoder_lr_mult: float = 1.0) -> list[dict]:
    """Optimizer groups of segmenter `name`: the encoder's with `lr_mult` = `encoder_lr_mult` and
    the rest (`core.optim.build_optimizer` multiplies the base learning rate by a group's lr_mult)."""
    if encoder_lr_mult == 1.0:
        return [{"params": list(model.parameters())}]
    prefixes = encoder_prefixes(name)
    encoder, rest = [], []
    for key, parameter in model.named_parameters():
        (encoder if key.startswith(prefixes) else rest).append(parameter)
    return [{"params": encoder, "lr_mult": encoder_lr_mult}, {"params": rest}]
