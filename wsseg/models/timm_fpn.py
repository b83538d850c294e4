"""Semantic FPN on a timm encoder (`model.name: timm_fpn`, `model.options.encoder: convnext_tiny`).

The feature pyramid of Lin et al. (CVPR 2017) on the encoder maps at strides 4 and coarser: a 1×1
lateral conv brings each to `channels`, and from the coarsest down each level adds the one above
it, upsampled. The segmentation branch follows Panoptic FPN (Kirillov et al., CVPR 2019) in a
compact form: one 3×3 conv-BN-ReLU per level (the paper stacks one per 2× upsampling), every
level upsampled bilinearly to stride 4 and summed, a 1×1 classifier, logits upsampled to the input.

Input: float N×3×H×W RGB in [0, 1] (normalised inside as the encoder's weights were trained).
Output: logits N×C×H×W. Any H, W ≥ 32.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.models.feature_perturbation import perturb_rows
from wsseg.models.timm_encoder import TimmFeatures, init_fresh_, levels_from, register_timm_segmenter

# The finest pyramid level: stride-2 maps (a ResNet's stem) stay out, as in FPN.
FINEST_STRIDE = 4


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class TimmFPN(nn.Module):
    """Semantic FPN segmenter on a timm encoder.

    Args:
        num_classes: output channels.
        encoder: timm model name.
        pretrained: the encoder's ImageNet weights (timm's download).
        channels: width of the pyramid and of the segmentation branch.
    """

    def __init__(self, num_classes: int, encoder: str = "resnet50", pretrained: bool = True,
                 channels: int = 128) -> None:
        super().__init__()
        self.encoder = TimmFeatures(encoder, pretrained, levels=levels_from(FINEST_STRIDE))
        level_channels = self.encoder.channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in level_channels)
        self.smooth = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in level_channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_fresh_(self.lateral, self.smooth, self.classifier)

    def forward(self, x: Tensor, perturb_from: int | None = None) -> Tensor:
        """Logits at the input size; samples from `perturb_from` on decode dropped-out encoder
        features (`models.feature_perturbation`)."""
        features = [perturb_rows(f, perturb_from) for f in self.encoder(x)]
        levels = [lateral(f) for lateral, f in zip(self.lateral, features)]
        for k in range(len(levels) - 2, -1, -1):
            levels[k] = levels[k] + F.interpolate(levels[k + 1], size=levels[k].shape[-2:], mode="bilinear",
                                                  align_corners=False)
        finest = levels[0].shape[-2:]
        merged = sum(F.interpolate(smooth(level), size=finest, mode="bilinear", align_corners=False)
                     for smooth, level in zip(self.smooth, levels))
        return F.interpolate(self.classifier(merged), size=x.shape[-2:], mode="bilinear", align_corners=False)


register_timm_segmenter("timm_fpn", TimmFPN)
