"""EncDecUnpool: a VGG16-BN encoder and a mirrored decoder that upsamples by max-unpooling.

DeconvNet-style (Noh, Hong & Han, ICCV 2015), the segmenter wsseg grew from. The decoder puts
each activation back where the encoder's max-pooling found it, so boundaries come from the
encoder's own switch positions rather than from interpolation.

Input: float N×3×H×W RGB in [0, 1] (normalised inside with ImageNet mean/std, which
`load_vgg16_imagenet` weights expect). Output: logits N×C×H×W. Any H, W ≥ 32 (five 2× pools).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from wsseg.models.normalization import register_normalisation
from wsseg.models.registry import SegmenterSpec, register_segmenter
from wsseg.models.vgg_weights import (
    VGG16_BLOCK_CHANNELS,
    init_vgg_weights_,
    load_module_tensors_,
    read_vgg16_tensors,
    resolve_vgg16_state_dict,
    scale_channels,
)


class ConvBNReLU(nn.Module):
    """3×3 conv → BN → ReLU, the VGG16-BN order, so its ImageNet weights drop straight in."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class EncDecUnpool(nn.Module):
    """VGG16-BN encoder (13 conv-BN-ReLU, 5 max-pools with indices) and its mirror image.

    Decoder block b unpools with encoder block b's indices, then runs b's convs in reverse
    channel order (e.g. block 4: 512→512, 512→512, 512→256). The very last conv maps to the
    classes with a bias and no BN/ReLU.

    Args:
        num_classes: output channels.
        width: multiplies every channel count (0.25 makes a fast CPU demo model). ImageNet
            weights only fit width 1.0.
        decoder_dropout: if > 0, Dropout(p) right after each of the 5 unpoolings; 0.5 scored
            best in the seed (0.603 vs 0.531 mIoU on Vaihingen).
    """

    def __init__(self, num_classes: int, width: float = 1.0, decoder_dropout: float = 0.0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if not 0.0 <= decoder_dropout < 1.0:
            raise ValueError(f"decoder_dropout must be in [0, 1), got {decoder_dropout}")
        self.num_classes = num_classes
        self.width = width
        register_normalisation(self)

        block_channels = [[scale_channels(c, width) for c in block] for block in VGG16_BLOCK_CHANNELS]

        self.encoder = nn.ModuleList()
        in_channels = 3
        block_inputs = []
        for channels in block_channels:
            block_inputs.append(in_channels)
            layers = []
            for out_channels in channels:
                layers.append(ConvBNReLU(in_channels, out_channels))
                in_channels = out_channels
            self.encoder.append(nn.Sequential(*layers))

        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        # One module serves all five blocks: dropout has no state.
        self.dropout = nn.Dropout(decoder_dropout) if decoder_dropout > 0 else nn.Identity()

        # decoder[0] undoes encoder block 5, decoder[4] block 1. Each retraces its encoder
        # block's channel path backwards, ending at that block's input width.
        self.decoder = nn.ModuleList()
        for b in reversed(range(len(block_channels))):
            path = list(reversed(block_channels[b])) + [block_inputs[b]]
            layers = [ConvBNReLU(c_in, c_out) for c_in, c_out in zip(path[:-1], path[1:])]
            if b == 0:
                layers = layers[:-1]  # the conv back to RGB width gives way to the classifier
            self.decoder.append(nn.Sequential(*layers))
        self.classifier = nn.Conv2d(block_channels[0][0], num_classes, 3, padding=1)

        init_vgg_weights_(self)

    def encoder_convs(self) -> list[ConvBNReLU]:
        """The 13 encoder conv-BN-ReLU layers in VGG16 order."""
        return [layer for block in self.encoder for layer in block]

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        pooled_from = []
        for block in self.encoder:
            x = block(x)
            size = x.shape[-2:]
            x, indices = self.pool(x)
            pooled_from.append((indices, size))
        for block, (indices, size) in zip(self.decoder, reversed(pooled_from)):
            # output_size: with odd sizes the floor-pooling dropped a row/column that
            # unpooling must restore (as zeros) to line up with the encoder.
            x = self.unpool(x, indices, output_size=size)
            x = block(self.dropout(x))
        return self.classifier(x)


def load_vgg16_imagenet(model: EncDecUnpool, weights) -> EncDecUnpool:
    """Load torchvision ImageNet VGG16 or VGG16-BN weights into the encoder of `model`.

    `weights`: a path to a torchvision `vgg16`/`vgg16_bn` state dict file, such a state dict,
    or a `torchvision.models.VGG16_Weights` / `VGG16_BN_Weights` member (which downloads).
    The 13 convs of `features` go to the 13 encoder convs in order, and with VGG16-BN the 13
    BNs to the encoder BNs; plain VGG16 has no BN, so the BNs keep their fresh init. The fully
    connected `classifier.*` has no counterpart here and is not used. Any other extra, missing
    or wrongly shaped tensor is an error naming it. Returns `model`.
    """
    if model.width != 1.0:
        raise ValueError(f"ImageNet VGG16 weights need width=1.0, the model has width={model.width}")
    state_dict: Mapping[str, Tensor] = resolve_vgg16_state_dict(weights)
    vgg = read_vgg16_tensors(state_dict)
    layers = model.encoder_convs()
    names = {id(m): n for n, m in model.named_modules()}
    for layer, (prefix, tensors) in zip(layers, vgg.convs):
        load_module_tensors_(layer.conv, names[id(layer.conv)], tensors, prefix)
    for layer, (prefix, tensors) in zip(layers, vgg.bns):
        load_module_tensors_(layer.bn, names[id(layer.bn)], tensors, prefix)
    return model


# 32: five 2× max-pools, each unpooled by its own indices.
register_segmenter(SegmenterSpec("encdec_unpool", EncDecUnpool, encoder_prefixes=("encoder.",),
                                  head_prefixes=("classifier.",), min_input_px=32, vgg_loader=load_vgg16_imagenet))
