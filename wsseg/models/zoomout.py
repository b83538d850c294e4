"""Zoom-out features (Mostajabi et al., CVPR 2015), also known as hypercolumns (Hariharan et al.,
CVPR 2015): VGG activations from shallow to deep, upsampled to one grid and stacked per pixel.

Each tapped activation map is resized bilinearly to a common resolution (`feature_scale` of the
input, half by default, as the seeds used) and the maps are concatenated into an N×Z×h×w
hypercolumn: every cell holds what the network saw there through receptive fields from a few
pixels (the first convs) to most of the image (the last ones). Taps are ReLU outputs:

- `pre_pool`: the layer just before each max-pool, Z = 64+128+256+512+512 = 1472 (VGG11 or VGG16);
- `all`: every conv, Z = 4224 for VGG16 (64·2 + 128·2 + 256·3 + 512·6), 2752 for VGG11.

A 3-layer classifier (by default Z → 1024 → 1024 → classes, ReLU, optional dropout) labels each
cell. It exists in two forms with the same numbers, because the method trains it twice:

- `ZoomOutMLP`, fully connected, on descriptors sampled at a few pixels per class and image
  (N×Z): cheap, and balanced across classes by construction;
- `ZoomOutConvClassifier`, the same layers as 1×1 convolutions on the dense hypercolumn, which
  the segmenter `ZoomOut` runs and fine-tunes on whole images. `fc_to_conv` turns the first
  into the second.

Both begin with `(x − mean) / std`, the statistics of the sampled descriptors, kept as
persistent buffers so that a checkpoint carries them.

Input: float N×3×H×W RGB in [0, 1] (normalised inside with ImageNet mean/std, which
`load_zoomout_vgg_imagenet` weights expect). Output: logits N×C×H×W, bilinearly upsampled from
the hypercolumn grid. Any H, W ≥ 1 (the pools round up).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.models.normalization import register_normalisation
from wsseg.models.registry import SegmenterSpec, register_segmenter
from wsseg.models.vgg_weights import (
    VGG_BLOCK_CHANNELS,
    init_vgg_weights_,
    load_module_tensors_,
    read_vgg_tensors,
    resolve_vgg16_state_dict,
    scale_channels,
)

TAPS = ("pre_pool", "all")


def tap_channels(backbone: str, taps: str, width: float = 1.0) -> list[int]:
    """Channels of each tapped activation, in network order; their sum is Z."""
    if backbone not in VGG_BLOCK_CHANNELS:
        raise ValueError(f"backbone must be one of {', '.join(VGG_BLOCK_CHANNELS)}, got {backbone!r}")
    if taps not in TAPS:
        raise ValueError(f"taps must be one of {', '.join(TAPS)}, got {taps!r}")
    blocks = [[scale_channels(c, width) for c in block] for block in VGG_BLOCK_CHANNELS[backbone]]
    return [block[-1] for block in blocks] if taps == "pre_pool" else [c for block in blocks for c in block]


class VGGTaps(nn.Module):
    """The convolutions of VGG11 or VGG16 (no fully connected layers), returning the tapped ReLU
    outputs. Pool 5 is left out: nothing after it is tapped."""

    def __init__(self, backbone: str = "vgg11", taps: str = "pre_pool", width: float = 1.0) -> None:
        super().__init__()
        self.channels = tap_channels(backbone, taps, width)
        self.taps = taps
        self.blocks = nn.ModuleList()
        in_channels = 3
        for block in VGG_BLOCK_CHANNELS[backbone]:
            layers: list[nn.Module] = []
            for out_channels in (scale_channels(c, width) for c in block):
                layers.append(nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*layers))
        # Rounding up, as FCN-8s here does: an odd side keeps its last row, so any input size works.
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def convs(self) -> list[nn.Conv2d]:
        """The convolutions in VGG order (what torchvision's `features.*` convs load into)."""
        return [m for m in self.blocks.modules() if isinstance(m, nn.Conv2d)]

    def forward(self, x: Tensor) -> list[Tensor]:
        tapped = []
        for index, block in enumerate(self.blocks):
            if index:
                x = self.pool(x)
            for layer in block:
                x = layer(x)
                if self.taps == "all":
                    tapped.append(x)
            if self.taps == "pre_pool":
                tapped.append(x)
        return tapped


def resize_tap(tap: Tensor, size: tuple[int, int]) -> Tensor:
    # align_corners=False keeps each map's pixel centres where its pooling put them; for the
    # full-resolution taps at scale 0.5 it is exactly the mean of each 2×2 block.
    return F.interpolate(tap, size=size, mode="bilinear", align_corners=False)


class FeatureStandardisation(nn.Module):
    """`(x − mean) / std` per feature, x N×Z or N×Z×h×w; the statistics of the sampled descriptors
    (`set_statistics`). Persistent buffers, not weights: they are data, fixed before training."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_std", torch.ones(num_features))

    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        if mean.shape != self.feature_mean.shape or std.shape != self.feature_std.shape:
            raise ValueError(f"statistics of shape {tuple(mean.shape)} / {tuple(std.shape)} for "
                             f"{self.feature_mean.numel()} features")
        if not bool((std > 0).all()):
            raise ValueError("feature std must be positive everywhere")
        with torch.no_grad():
            self.feature_mean.copy_(mean)
            self.feature_std.copy_(std)

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.feature_mean.view(shape)) / self.feature_std.view(shape)


class ZoomOutMLP(nn.Module):
    """The classifier in its fully connected form, on sampled descriptors N×Z → logits N×C.

    Args:
        in_features: Z.
        num_classes: C.
        hidden: widths of the hidden layers (two of 1024 make the 3-layer classifier).
        dropout: element-wise dropout after each hidden ReLU (0: none).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (1024, 1024),
                 dropout: float = 0.0) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.norm = FeatureStandardisation(in_features)
        self.hidden = nn.ModuleList(self.layer(a, b) for a, b in zip(widths, widths[1:]))
        self.score = self.layer(widths[-1], num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def layer(in_features: int, out_features: int) -> nn.Module:
        return nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        for layer in self.hidden:
            x = self.dropout(self.relu(layer(x)))
        return self.score(x)


class ZoomOutConvClassifier(ZoomOutMLP):
    """The same classifier as 1×1 convolutions, on a dense hypercolumn N×Z×h×w → logits N×C×h×w.

    Its dropout is element-wise (`nn.Dropout`, not `Dropout2d`): each cell's features drop
    independently, as each sampled descriptor's did in the fully connected form."""

    @staticmethod
    def layer(in_features: int, out_features: int) -> nn.Module:
        return nn.Conv2d(in_features, out_features, 1)


def fc_to_conv(mlp: ZoomOutMLP) -> ZoomOutConvClassifier:
    """The 1×1-conv form of `mlp`, giving the same outputs at every cell.

    A Linear weight d_out×d_in is the 1×1 conv weight d_out×d_in×1×1; the feature statistics stay
    fixed buffers, so fine-tuning moves the weights but not the normalisation.
    """
    linears = [*mlp.hidden, mlp.score]
    hidden = [layer.out_features for layer in mlp.hidden]
    conv = ZoomOutConvClassifier(linears[0].in_features, mlp.score.out_features, hidden, mlp.dropout.p)
    convs = [*conv.hidden, conv.score]
    with torch.no_grad():
        for linear, target in zip(linears, convs):
            target.weight.copy_(linear.weight.view(*linear.weight.shape, 1, 1))
            target.bias.copy_(linear.bias)
        conv.norm.load_state_dict(mlp.norm.state_dict())
    return conv.train(mlp.training)


class ZoomOut(nn.Module):
    """Zoom-out segmenter: VGG taps → hypercolumn at `feature_scale` → 1×1-conv classifier →
    bilinear upsampling to the input.

    Args:
        num_classes: output channels.
        backbone: "vgg11" or "vgg16".
        taps: "pre_pool" (the layer before each pool) or "all" (every conv).
        feature_scale: the hypercolumn grid relative to the input (0.5: half, as in the seeds).
        hidden: hidden widths of the classifier.
        dropout: element-wise dropout after each hidden layer of the classifier.
        width: multiplies every VGG channel count (for CPU tests); ImageNet weights need 1.0.
        freeze_backbone: the VGG weights stay as loaded, as the seeds kept them (the classifier
            learns, dense fine-tuning included); false fine-tunes them too.
    """

    def __init__(self, num_classes: int, backbone: str = "vgg11", taps: str = "pre_pool",
                 feature_scale: float = 0.5, hidden: Sequence[int] = (1024, 1024), dropout: float = 0.0,
                 width: float = 1.0, freeze_backbone: bool = True) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if not 0.0 < feature_scale <= 1.0:
            raise ValueError(f"feature_scale must be in (0, 1], got {feature_scale}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden widths must be at least 1, got {list(hidden)}")
        self.backbone, self.width, self.feature_scale = backbone, width, feature_scale
        self.hidden_widths, self.dropout = [int(h) for h in hidden], dropout
        register_normalisation(self)
        self.features = VGGTaps(backbone, taps, width)
        self.feature_channels = sum(self.features.channels)
        self.classifier = ZoomOutConvClassifier(self.feature_channels, num_classes, self.hidden_widths, dropout)
        init_vgg_weights_(self.features)
        self.features.requires_grad_(not freeze_backbone)

    def fc_classifier(self) -> ZoomOutMLP:
        """A fresh fully connected classifier of this model's sizes, for the sampled descriptors."""
        return ZoomOutMLP(self.feature_channels, self.classifier.score.out_channels, self.hidden_widths,
                          self.dropout)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The hypercolumn grid for an H×W input (rounded up, so every input pixel has a cell)."""
        return max(1, math.ceil(height * self.feature_scale)), max(1, math.ceil(width * self.feature_scale))

    def taps(self, x: Tensor) -> list[Tensor]:
        return self.features((x - self.mean) / self.std)

    def hypercolumn(self, x: Tensor) -> Tensor:
        """N×Z×h×w: every tap resized to the grid of `grid_size`, concatenated in network order."""
        size = self.grid_size(*x.shape[-2:])
        return torch.cat([resize_tap(tap, size) for tap in self.taps(x)], dim=1)

    def hypercolumns_at(self, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """K×Z: the hypercolumn of one image (1×3×H×W) at grid cells (rows[k], cols[k]), the same
        numbers as `hypercolumn(x)[0, :, rows, cols].T`, one tap at a time: a 512 px crop's
        dense VGG16 hypercolumn alone would take over 1 GB."""
        if x.shape[0] != 1:
            raise ValueError(f"hypercolumns_at takes one image, got a batch of {x.shape[0]}")
        size = self.grid_size(*x.shape[-2:])
        return torch.cat([resize_tap(tap, size)[0][:, rows, cols] for tap in self.taps(x)], dim=0).T

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(self.hypercolumn(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def load_zoomout_vgg_imagenet(model: ZoomOut, weights) -> ZoomOut:
    """Load torchvision ImageNet VGG11 or VGG16 (no BN) weights, whichever `model.backbone` is,
    into its convolutions, by structure (`vgg_weights.read_vgg_tensors`).

    `weights`: a path to a torchvision `vgg11` / `vgg16` state dict file, such a state dict, or a
    `torchvision.models.VGG11_Weights` / `VGG16_Weights` member (which downloads). The convs of
    `features` go in order; the fully connected `classifier.*` is not used. A file of the other
    depth, BN weights, and any extra, missing or wrongly shaped tensor are errors naming it.
    """
    if model.width != 1.0:
        raise ValueError(f"ImageNet VGG weights need width=1.0, the model has width={model.width}")
    vgg = read_vgg_tensors(resolve_vgg16_state_dict(weights), model.backbone)
    if vgg.has_batch_norm:
        raise ValueError(f"these are {model.backbone.upper()}-BN weights (a BatchNorm follows features.0); the "
                         f"zoom-out backbone has no BN and needs plain {model.backbone.upper()} weights")
    names = {id(m): n for n, m in model.named_modules()}
    for conv, (prefix, tensors) in zip(model.features.convs(), vgg.convs):
        load_module_tensors_(conv, names[id(conv)], tensors, prefix)
    return model


# Its VGG weights are those of its `backbone` (VGG11 or VGG16).
register_segmenter(SegmenterSpec("zoomout", ZoomOut, encoder_prefixes=("features.",),
                                  head_prefixes=("classifier.score.",), vgg_loader=load_zoomout_vgg_imagenet))
