"""Segmenters by name.

Every segmenter takes float N×3×H×W RGB in [0, 1] (it normalises inside) and returns logits
N×C×H×W at the input size, for any H, W its strides allow. `build_segmenter("unet", 6,
base_channels=32)` is the whole interface; each model's own file documents its arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from wsseg.models.deeplabv3plus import DeepLabV3Plus
from wsseg.models.efficientnet_lite import EfficientNetLite0UNet
from wsseg.models.encdec_unpool import EncDecUnpool, load_vgg16_imagenet
from wsseg.models.fcn import FCN8s, load_fcn8s_vgg16_imagenet
from wsseg.models.timm_fpn import TimmFPN
from wsseg.models.timm_unet import TimmUNet
from wsseg.models.unet import UNet
from wsseg.models.zoomout import ZoomOut, load_zoomout_vgg_imagenet

# name → constructor taking num_classes plus keyword arguments. Other model families
# (resnet38.py, single_stage.py, ...) register their segmenters here the same way.
SEGMENTERS: dict[str, Callable[..., nn.Module]] = {
    "encdec_unpool": EncDecUnpool,
    "effnet_lite0_unet": EfficientNetLite0UNet,
    "unet": UNet,
    "fcn8s": FCN8s,
    "zoomout": ZoomOut,
    "timm_unet": TimmUNet,
    "timm_fpn": TimmFPN,
    "deeplabv3plus": DeepLabV3Plus,
}

# Segmenters whose encoder is any timm model (`options.encoder`), ImageNet weights by timm's download.
TIMM_SEGMENTERS = ("timm_unet", "timm_fpn", "deeplabv3plus")


def timm_encoder_of(name: str, options: dict) -> tuple[str, bool] | None:
    """(timm model name, whether its ImageNet weights load) of segmenter `name` built with
    `options`; None for a segmenter without a timm encoder."""
    if name not in TIMM_SEGMENTERS:
        return None
    defaults = inspect.signature(SEGMENTERS[name]).parameters
    return (options.get("encoder", defaults["encoder"].default),
            bool(options.get("pretrained", defaults["pretrained"].default)))

# Segmenters with an ImageNet VGG encoder, and how its weights go in (`model.encoder_weights`):
# VGG16 for all but zoomout, whose weights are those of its `backbone` (VGG11 or VGG16).
VGG_ENCODER_LOADERS: dict[str, Callable[[nn.Module, object], nn.Module]] = {
    "encdec_unpool": load_vgg16_imagenet,
    "fcn8s": load_fcn8s_vgg16_imagenet,
    "zoomout": load_zoomout_vgg_imagenet,
}


def build_segmenter(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build the segmenter registered as `name`; unknown names and arguments are errors."""
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r}; known: {', '.join(sorted(SEGMENTERS))}")
    constructor = SEGMENTERS[name]
    accepted = [p for p in inspect.signature(constructor).parameters if p != "num_classes"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"segmenter {name!r} has no argument(s) {', '.join(unknown)}; "
                        f"it accepts: {', '.join(accepted)}")
    return constructor(num_classes=num_classes, **kwargs)


# Segmenters whose forward takes `perturb_from` (`models.feature_perturbation`): those whose
# encoder features are all at hand before the decoder starts.
FEATURE_PERTURBABLE = ("effnet_lite0_unet", "unet", *TIMM_SEGMENTERS)


def supports_feature_perturbation(name: str) -> bool:
    return name in FEATURE_PERTURBABLE


def min_input_px(name: str, options: dict) -> int:
    """The least side of an input segmenter `name` built with `options` takes (its docstring's
    "any H, W ≥ ..."): a window or crop below it fails inside the network's pooling."""
    if name == "unet":
        return 2 ** int(options.get("depth", 4))
    if name == "encdec_unpool":
        return 32
    if name in TIMM_SEGMENTERS:
        return 32  # the coarsest stride of their encoders, or of a ViT's pyramid
    return 1


def untrained_options(options: dict) -> dict:
    """Constructor `options` with ImageNet loading off (`pretrained`), for a segmenter whose every
    weight then comes from a checkpoint: the ImageNet weights are not loaded to be overwritten."""
    return {k: (False if k == "pretrained" else v) for k, v in options.items()}


def load_encoder_weights(name: str, model: nn.Module, weights) -> nn.Module:
    """Load ImageNet VGG weights (a local state dict file) into the encoder of segmenter `name`."""
    if name not in VGG_ENCODER_LOADERS:
        raise ValueError(f"model.encoder_weights: segmenter {name!r} has no VGG encoder to load them into "
                         f"(those that have: {', '.join(sorted(VGG_ENCODER_LOADERS))})")
    return VGG_ENCODER_LOADERS[name](model, weights)


# The ImageNet-initialised part of each segmenter (state-dict key prefixes), whose learning rate
# `train.encoder_lr_mult` scales, as mmsegmentation's `lr_mult` on a backbone: fine-tuning a
# pretrained encoder at the rate of a fresh decoder forgets what ImageNet taught it.
ENCODER_PREFIXES: dict[str, tuple[str, ...]] = {
    "encdec_unpool": ("encoder.",),
    "effnet_lite0_unet": ("encoder.",),
    "fcn8s": ("blocks.", "fc6.", "fc7."),
    "unet": ("stem.", "down."),
    "zoomout": ("features.",),
    # `encoder.body.` only: a ViT's pyramid (`encoder.pyramid.`) is new, as the decoder is.
    **{name: ("encoder.body.",) for name in TIMM_SEGMENTERS},
}


# The classifier of each segmenter (state-dict key prefixes): the layers whose output channels
# are the classes, which `--reset-head` leaves freshly initialised when a model learns new classes.
HEAD_PREFIXES: dict[str, tuple[str, ...]] = {
    "encdec_unpool": ("classifier.",),
    "effnet_lite0_unet": ("classifier.",),
    "unet": ("classifier.",),
    # FCN-8s scores every skip and upsamples class maps: all of that has num_classes channels.
    "fcn8s": ("score_fr.", "score_pool4.", "score_pool3.", "upscore2.", "upscore_pool4.", "upscore8."),
    "zoomout": ("classifier.score.",),
    **{name: ("classifier.",) for name in TIMM_SEGMENTERS},
}


def head_prefixes(name: str) -> tuple[str, ...]:
    """The state-dict key prefixes of segmenter `name`'s classifier (`HEAD_PREFIXES`)."""
    if name not in HEAD_PREFIXES:
        raise ValueError(f"segmenter {name!r} has no classifier registered in models.HEAD_PREFIXES")
    return HEAD_PREFIXES[name]


def parameter_groups(name: str, model: nn.Module, encoder_lr_mult: float = 1.0) -> list[dict]:
    """Optimizer groups of segmenter `name`: the encoder's with `lr_mult` = `encoder_lr_mult` and
    the rest (`core.optim.build_optimizer` multiplies the base learning rate by a group's lr_mult)."""
    if encoder_lr_mult == 1.0:
        return [{"params": list(model.parameters())}]
    if name not in ENCODER_PREFIXES:
        raise ValueError(f"train.encoder_lr_mult: segmenter {name!r} has no encoder registered in "
                         f"models.ENCODER_PREFIXES")
    encoder, rest = [], []
    for key, parameter in model.named_parameters():
        (encoder if key.startswith(ENCODER_PREFIXES[name]) else rest).append(parameter)
    return [{"params": encoder, "lr_mult": encoder_lr_mult}, {"params": rest}]
