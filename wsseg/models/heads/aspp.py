"""Atrous spatial pyramid pooling (DeepLab v3+) on the deep backbone features.

Four parallel branches (a 1×1 conv and 3×3 convs at rates 12, 24, 36: the rates for output
stride 8) plus an image-pooling branch, each conv-BN-ReLU, concatenated and fused by a 1×1.

**literal**: the published model of Araslanov & Roth (CVPR 2020) keeps every ASPP BN in eval mode from the start, so
its running statistics never move from their initial mean 0 / variance 1 and each BN is just a
trainable per-channel affine `γ·x/√(1+ε) + β`. That is the default; `literal_bn=False` gives
ordinary batch statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _branch(in_ch, out_ch, kernel_size, dilation):
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=dilation * (kernel_size // 2),
                     dilation=dilation, bias=False)
    nn.init.kaiming_normal_(conv.weight)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    def __init__(self, in_channels: int, channels: int = 256, rates=(12, 24, 36),
                 dropout: float = 0.5, literal_bn: bool = True):
        super().__init__()
        self.literal_bn = literal_bn
        self.rate1 = _branch(in_channels, channels, 1, 1)
        self.atrous = nn.ModuleList(_branch(in_channels, channels, 3, r) for r in rates)
        self.image_pool = _branch(in_channels, channels, 1, 1)
        self.project = _branch(channels * (2 + len(rates)), channels, 1, 1)
        # Element-wise dropout (not channel dropout), as published.
        self.dropout = nn.Dropout(dropout)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.literal_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x):
        pooled = self.image_pool(F.adaptive_avg_pool2d(x, 1))
        branches = [self.rate1(x), *(conv(x) for conv in self.atrous),
                    pooled.expand(-1, -1, *x.shape[-2:])]
        return self.dropout(self.project(torch.cat(branches, 1)))
