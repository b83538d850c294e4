"""Global cue injection: shallow features modulated by global context from the deep ones.

The shallow (stride-4) features see little context; a global max over a projection of the deep
features gives one scale γ and one shift β per channel, applied like adaptive instance
normalisation: `relu(skip·(γ+1) + β)`. The skip is normalised without its own affine so that
γ, β alone set its scale and offset.

The convolutions are those of Araslanov & Roth (CVPR 2020); the BN-ReLU after the deep projection
and after the final 1×1 are from their published module (the paper does not describe them).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def _conv1x1(in_ch, out_ch):
    conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight)
    return conv


class GlobalCueInjection(nn.Module):
    def __init__(self, shallow_channels: int, channels: int = 256):
        super().__init__()
        self.channels = channels
        self.deep_to_film = nn.Sequential(_conv1x1(channels, 2 * channels),
                                          nn.BatchNorm2d(2 * channels), nn.ReLU(inplace=True))
        self.skip = nn.Sequential(_conv1x1(shallow_channels, channels),
                                  nn.BatchNorm2d(channels, affine=False))
        self.out = nn.Sequential(_conv1x1(channels, channels), nn.BatchNorm2d(channels),
                                 nn.ReLU(inplace=True))

    def forward(self, shallow, deep):
        """shallow: N×S×h×w backbone features; deep: N×channels×h'×w' decoder features."""
        film = self.deep_to_film(deep).amax(dim=(2, 3))[..., None, None]
        gamma, beta = film[:, :self.channels], film[:, self.channels:]
        x = F.relu(self.skip(shallow) * (gamma + 1) + beta)
        return self.out(x)
