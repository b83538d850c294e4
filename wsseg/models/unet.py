"""U-Net (Ronneberger et al. 2015), the classic encoder-decoder with skip concatenation.

Changes from the paper, all for segmenting crops of any size: 3×3 convs are padded (the paper's
valid convs shrink the map and need overlap-tile inference), BN after each conv (trains from
scratch without the paper's careful init), and an up-sampled map that comes out one pixel short
of its skip (odd sizes) is zero-padded at the bottom/right to match.

Input: float N×3×H×W RGB in [0, 1] (normalised inside with ImageNet mean/std). Output: logits
N×C×H×W. Any H, W ≥ 2^depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.models.feature_perturbation import perturb_rows
from wsseg.models.normalization import register_normalisation
from wsseg.models.registry import SegmenterSpec, register_segmenter



class DoubleConv(nn.Sequential):
    """(3×3 conv → BN → ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """2×2 up-convolution halving the channels, concatenate the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        # Padded always (by zero when the sizes match), not under an `if`: a traced graph (ONNX,
        # TorchScript) then keeps the size arithmetic instead of the branch its example took.
        x = F.pad(x, [0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net with `depth` down- and up-sampling stages.

    Args:
        num_classes: output channels.
        base_channels: channels of the first stage; stage k has base_channels·2^k (the paper:
            64, ..., 1024 at the bottom for depth 4).
        depth: number of 2× poolings.
    """

    def __init__(self, num_classes: int, base_channels: int = 64, depth: int = 4) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        register_normalisation(self)

        channels = [base_channels * 2**k for k in range(depth + 1)]
        self.stem = DoubleConv(3, channels[0])
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(DoubleConv(c_in, c_out)
                                  for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.up = nn.ModuleList(UpBlock(c_in, c_out)
                                for c_in, c_out in zip(channels[:0:-1], channels[-2::-1]))
        self.classifier = nn.Conv2d(channels[0], num_classes, 1)

        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, perturb_from: int | None = None) -> Tensor:
        """Logits at the input size; samples from `perturb_from` on decode dropped-out encoder
        features (`models.feature_perturbation`)."""
        x = self.stem((x - self.mean) / self.std)
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(self.pool(x))
        x = perturb_rows(x, perturb_from)
        skips = [perturb_rows(skip, perturb_from) for skip in skips]
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)
        return self.classifier(x)


register_segmenter(SegmenterSpec("unet", UNet, encoder_prefixes=("stem.", "down."), head_prefixes=("classifier.",),
                                  min_input_px=lambda options: 2 ** int(options.get("depth", 4)), perturbable=True))
