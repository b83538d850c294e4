"""DeepLabV3+ (Chen et al., ECCV 2018) on a timm encoder (`model.name: deeplabv3plus`,
`model.options.encoder: resnet50`).

The encoder runs at output stride 16 (its last stage dilated, timm's `output_stride`; a plain
ViT is at 16 already). ASPP on its deepest map: a 1×1 conv, 3×3 convs at rates 6, 12, 18 and
image pooling, each conv-BN-ReLU, concatenated and projected by a 1×1 (`heads.aspp.ASPP`, with
ordinary batch statistics and the 0.1 dropout of the published code). The decoder upsamples that
bilinearly to the stride-4 map, concatenates the stride-4 features reduced to 48 channels by a
1×1 conv-BN-ReLU, refines with two 3×3 conv-BN-ReLU, classifies with a 1×1 conv and upsamples
the logits bilinearly to the input.

The image pooling branch normalises one pooled vector per image: training needs at least two
images per batch (BatchNorm's own limit).

Input: float N×3×H×W RGB in [0, 1] (normalised inside as the encoder's weights were trained).
Output: logits N×C×H×W. Any H, W ≥ 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.models.feature_perturbation import perturb_rows
from wsseg.models.heads.aspp import ASPP
from wsseg.models.timm_encoder import TimmFeatures, init_fresh_, register_timm_segmenter, skip_and_deepest
from wsseg.models.timm_fpn import conv_bn_relu

OUTPUT_STRIDE = 16
ASPP_RATES = (6, 12, 18)  # for output stride 16 (12, 24, 36 at 8)
LOW_LEVEL_STRIDE, LOW_LEVEL_CHANNELS = 4, 48
ASPP_DROPOUT = 0.1


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ segmenter on a timm encoder.

    Args:
        num_classes: output channels.
        encoder: timm model name (one that timm can dilate to output stride 16, or a plain ViT).
        pretrained: the encoder's ImageNet weights (timm's download).
        channels: width of ASPP and of the decoder's 3×3 convs (256 in the paper).
    """

    def __init__(self, num_classes: int, encoder: str = "resnet50", pretrained: bool = True,
                 channels: int = 256) -> None:
        super().__init__()
        self.encoder = TimmFeatures(encoder, pretrained, output_stride=OUTPUT_STRIDE,
                                    levels=skip_and_deepest(LOW_LEVEL_STRIDE))
        low_channels, deep_channels = self.encoder.channels
        self.aspp = ASPP(deep_channels, channels, rates=ASPP_RATES, dropout=ASPP_DROPOUT, literal_bn=False)
        self.reduce = conv_bn_relu(low_channels, LOW_LEVEL_CHANNELS, 1)
        self.refine = nn.Sequential(conv_bn_relu(channels + LOW_LEVEL_CHANNELS, channels, 3),
                                    conv_bn_relu(channels, channels, 3))
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_fresh_(self.reduce, self.refine, self.classifier)

    def forward(self, x: Tensor, perturb_from: int | None = None) -> Tensor:
        """Logits at the input size; samples from `perturb_from` on decode dropped-out encoder
        features (`models.feature_perturbation`)."""
        low, deep = (perturb_rows(f, perturb_from) for f in self.encoder(x))
        low, deep = self.reduce(low), self.aspp(deep)
        deep = F.interpolate(deep, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.classifier(self.refine(torch.cat([deep, low], dim=1)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


register_timm_segmenter("deeplabv3plus", DeepLabV3Plus)
