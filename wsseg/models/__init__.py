"""Segmenters by name.

Every segmenter takes float N×3×H×W RGB in [0, 1] (it normalises inside) and returns logits
N×C×H×W at the input size, for any H, W its strides allow. `build_segmenter("unet", 6,
base_channels=32)` is the whole interface; each model's own file documents its arguments and
registers its `SegmenterSpec` (models.registry).
"""

from __future__ import annotations

# Importing each family registers its segmenters (models.registry); the names below are the interface.
from wsseg.models import (deeplabv3plus, efficientnet_lite, encdec_unpool, fcn, timm_fpn, timm_unet,  # noqa: F401
                          unet, zoomout)
from wsseg.models.registry import (SegmenterSpec, build_segmenter, encoder_prefixes, head_prefixes,
                                   load_encoder_weights, min_input_px, parameter_groups, perturbable_segmenters,
                                   register_segmenter, segmenter_names, segmenter_spec, supports_feature_perturbation,
                                   timm_encoder_of, timm_segmenters, untrained_options, vgg_encoder_segmenters)

__all__ = ["SegmenterSpec", "build_segmenter", "encoder_prefixes", "head_prefixes", "load_encoder_weights",
           "min_input_px", "parameter_groups", "perturbable_segmenters", "register_segmenter", "segmenter_names",
           "segmenter_spec", "supports_feature_perturbation", "timm_encoder_of", "timm_segmenters",
           "untrained_options", "vgg_encoder_segmenters"]
