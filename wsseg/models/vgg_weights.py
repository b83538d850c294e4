"""torchvision VGG16 / VGG16-BN (and VGG11) ImageNet weights, read by structure.

torchvision names VGG layers by their position in `features` (`features.0.weight`,
`features.1.running_mean`, ...), and the positions differ between VGG16 and VGG16-BN. Our models
name layers by role, so weights are matched by order instead: the k-th conv found in `features`
goes to our k-th conv, the k-th BN to our k-th BN. Every tensor is shape-checked, and anything
that does not fit is an error naming the offending key: a silently half-loaded backbone is the
failure this module exists to prevent.

The VGG-based models (encdec_unpool.py, fcn.py, zoomout.py) also share through this module the
channel plan and width scaling those weights must fit, the normalisation they were trained with,
and the fresh init used when they are not loaded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

# Output channels of the 13 VGG16 convolutions, block by block (3×3, padding 1).
VGG16_BLOCK_CHANNELS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
NUM_VGG16_CONVS = sum(len(block) for block in VGG16_BLOCK_CHANNELS)
# VGG11 ("configuration A" of Simonyan & Zisserman): 8 convolutions, one or two per block.
VGG11_BLOCK_CHANNELS = ((64,), (128,), (256, 256), (512, 512), (512, 512))
VGG_BLOCK_CHANNELS = {"vgg11": VGG11_BLOCK_CHANNELS, "vgg16": VGG16_BLOCK_CHANNELS}


def scale_channels(channels: int, width: float) -> int:
    """A channel count times the width multiplier of the VGG-based models, at least 1."""
    return max(1, round(channels * width))


def init_vgg_weights_(model: nn.Module) -> None:
    """Fresh weights for the VGG-based models when no ImageNet weights are loaded: He-normal
    convs (fan-out, ReLU) with zero bias, identity BNs."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


_CONV_PARAMS = {"weight", "bias"}
_BN_PARAMS = {"weight", "bias", "running_mean", "running_var"}
# Checkpoints saved before PyTorch 0.4 (torchvision's own vgg16_bn file among them) lack it.
_BN_OPTIONAL_PARAMS = {"num_batches_tracked"}


@dataclass
class VGG16Tensors:
    """The tensors of a VGG16(-BN) state dict, grouped by layer in network order.

    `convs[k]` / `bns[k]` map parameter names ("weight", "running_mean", ...) to tensors and
    remember the torchvision key prefix (`features.N`) for error messages. `bns` is empty for
    plain VGG16. `classifier` holds the fully connected head as given (`classifier.N.*`).
    """

    convs: list[tuple[str, dict[str, Tensor]]]
    bns: list[tuple[str, dict[str, Tensor]]]
    classifier: dict[str, Tensor] = field(default_factory=dict)

    @property
    def has_batch_norm(self) -> bool:
        return bool(self.bns)


def resolve_vgg16_state_dict(weights) -> Mapping[str, Tensor]:
    """A state dict from a file path, a state dict, or a torchvision VGG16(_BN)_Weights enum
    (VGG11(_BN)_Weights too: `read_vgg_tensors` then checks which network it is).

    Only the enum downloads (torchvision caches it under $TORCH_HOME); paths and dicts never do.
    """
    from torchvision.models import VGG11_BN_Weights, VGG11_Weights, VGG16_BN_Weights, VGG16_Weights

    if isinstance(weights, (VGG16_Weights, VGG16_BN_Weights, VGG11_Weights, VGG11_BN_Weights)):
        return weights.get_state_dict(progress=True, check_hash=True)
    if isinstance(weights, (str, os.PathLike)):
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise TypeError(f"{weights} holds a {type(state).__name__}, not a VGG16 state dict")
        return state
    if isinstance(weights, Mapping):
        return weights
    raise TypeError(
        "weights must be a path to a VGG16/VGG16-BN state dict, a state dict, or a "
        f"torchvision VGG16_Weights/VGG16_BN_Weights member; got {type(weights).__name__}"
    )


def read_vgg16_tensors(state_dict: Mapping[str, Tensor]) -> VGG16Tensors:
    """Group a torchvision VGG16 or VGG16-BN state dict into its 13 convs (and 13 BNs)."""
    return read_vgg_tensors(state_dict, "vgg16")


def read_vgg_tensors(state_dict: Mapping[str, Tensor], network: str) -> VGG16Tensors:
    """Group a torchvision VGG state dict of `network` ("vgg11", "vgg16"; with or without BN)
    into its convs (and BNs); a state dict of another depth is an error."""
    num_convs = sum(len(block) for block in VGG_BLOCK_CHANNELS[network])
    layers: dict[int, dict[str, Tensor]] = {}
    classifier: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        if key.startswith("classifier."):
            classifier[key] = tensor
            continue
        match = re.fullmatch(r"features\.(\d+)\.(\w+)", key)
        if match is None:
            raise KeyError(f"unexpected key {key!r}: not a torchvision VGG16 layer")
        layers.setdefault(int(match.group(1)), {})[match.group(2)] = tensor

    convs: list[tuple[str, dict[str, Tensor]]] = []
    bns: list[tuple[str, dict[str, Tensor]]] = []
    for index in sorted(layers):
        prefix, params = f"features.{index}", layers[index]
        if "running_mean" in params:
            missing = _BN_PARAMS - params.keys()
            unexpected = params.keys() - _BN_PARAMS - _BN_OPTIONAL_PARAMS
            bns.append((prefix, params))
        else:
            missing = _CONV_PARAMS - params.keys()
            unexpected = params.keys() - _CONV_PARAMS
            if "weight" in params and params["weight"].ndim != 4:
                raise ValueError(f"{prefix}.weight has shape {tuple(params['weight'].shape)}, "
                                 "not a conv weight")
            convs.append((prefix, params))
        if missing:
            raise KeyError(f"missing key(s) {sorted(f'{prefix}.{p}' for p in missing)}")
        if unexpected:
            raise KeyError(f"unexpected key(s) {sorted(f'{prefix}.{p}' for p in unexpected)}")

    if len(convs) != num_convs:
        raise ValueError(f"found {len(convs)} convs in features.* "
                         f"({[p for p, _ in convs]}), {network.upper()} has {num_convs}")
    if bns and len(bns) != len(convs):
        raise ValueError(f"found {len(bns)} BatchNorms for {len(convs)} convs; "
                         f"{network.upper()}-BN has one after every conv")
    return VGG16Tensors(convs=convs, bns=bns, classifier=classifier)


def copy_checked_(target: Tensor, source: Tensor, source_key: str, target_key: str) -> None:
    """target ← source, an error naming both keys when the shapes differ."""
    if target.shape != source.shape:
        raise ValueError(f"{source_key} has shape {tuple(source.shape)} but {target_key} "
                         f"expects {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(source)


def load_module_tensors_(module: nn.Module, module_key: str,
                         tensors: Mapping[str, Tensor], source_prefix: str) -> None:
    """Copy `tensors` (parameter name → tensor) into `module`'s parameters and buffers."""
    own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    for name, tensor in tensors.items():
        if name not in own or own[name] is None:
            raise KeyError(f"{source_prefix}.{name} has no counterpart in {module_key}")
        copy_checked_(own[name], tensor, f"{source_prefix}.{name}", f"{module_key}.{name}")
