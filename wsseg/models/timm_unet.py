"""U-Net decoder on a timm encoder (`model.name: timm_unet`, `model.options.encoder: resnet50`).

The decoder is the one of the EfficientNet-Lite0 U-Net (`efficientnet_lite.DecoderBlock`): from
the coarsest features up, each block upsamples to the next finer encoder map, concatenates it and
applies two 3×3 conv-BN-ReLU. The finest map is at stride 2 for most CNNs (ResNet, EfficientNet,
MobileNetV3) and stride 4 for ConvNeXt and ViTs; the classifier works there and its logits are
upsampled bilinearly to the input.

Input: float N×3×H×W RGB in [0, 1] (normalised inside as the encoder's weights were trained).
Output: logits N×C×H×W. Any H, W ≥ 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.models.efficientnet_lite import DecoderBlock
from wsseg.models.feature_perturbation import perturb_rows
from wsseg.models.timm_encoder import TimmFeatures, init_fresh_, register_timm_segmenter

# Widths of the decoder blocks, coarse to fine, of which an encoder with k skips takes the first k.
DECODER_CHANNELS = (256, 128, 64, 32)


class TimmUNet(nn.Module):
    """U-Net segmenter on a timm encoder.

    Args:
        num_classes: output channels.
        encoder: timm model name.
        pretrained: the encoder's ImageNet weights (timm's download).
        decoder_channels: one width per skip, coarse to fine (4 for ResNets, 3 for ConvNeXt and
            ViTs); default the first of 256, 128, 64, 32.
    """

    def __init__(self, num_classes: int, encoder: str = "resnet50", pretrained: bool = True,
                 decoder_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        self.encoder = TimmFeatures(encoder, pretrained)
        skip_channels = self.encoder.channels[-2::-1]
        if decoder_channels is None:
            if len(skip_channels) > len(DECODER_CHANNELS):
                raise ValueError(f"timm encoder {encoder!r} has {len(skip_channels)} skips: give decoder_channels")
            decoder_channels = DECODER_CHANNELS[:len(skip_channels)]
        if len(decoder_channels) != len(skip_channels):
            strides = ", ".join(map(str, self.encoder.strides[-2::-1]))
            raise ValueError(f"decoder_channels needs {len(skip_channels)} entries for {encoder!r} (one per skip, "
                             f"at strides {strides}), got {tuple(decoder_channels)}")
        self.decoder = nn.ModuleList()
        in_channels = self.encoder.channels[-1]
        for skip, out_channels in zip(skip_channels, decoder_channels):
            self.decoder.append(DecoderBlock(in_channels, skip, out_channels))
            in_channels = out_channels
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        init_fresh_(self.decoder, self.classifier)

    def forward(self, x: Tensor, perturb_from: int | None = None) -> Tensor:
        """Logits at the input size; samples from `perturb_from` on decode dropped-out encoder
        features (`models.feature_perturbation`)."""
        *skips, y = (perturb_rows(f, perturb_from) for f in self.encoder(x))
        for block, skip in zip(self.decoder, reversed(skips)):
            y = block(y, skip)
        return F.interpolate(self.classifier(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


register_timm_segmenter("timm_unet", TimmUNet)
