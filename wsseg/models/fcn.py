"""FCN-8s (Long et al. 2015): VGG16 made fully convolutional, with skips from pool3 and pool4.

fc6/fc7 become 7×7 and 1×1 convolutions. Class scores from fc7 are upsampled 2× (learnable,
initialised bilinear), summed with scores from pool4, upsampled 2× again, summed with scores
from pool3, and upsampled 8× to the input.

Where this differs from the reference Caffe net, and why: instead of padding the first conv by
100 px (so fc6's unpadded 7×7 fits any input) and cropping with hand-computed offsets, fc6 is
padded by 3 and pools round up (ceil mode). Then every map at stride s has ceil(H/s) rows, each
2× up-convolution covers its skip, and top-left cropping aligns them exactly. Any H, W ≥ 1.

Input: float N×3×H×W RGB in [0, 1] (normalised inside with ImageNet mean/std, which
`load_fcn8s_vgg16_imagenet` weights expect). Output: logits N×C×H×W.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsseg.models.normalization import register_normalisation
from wsseg.models.registry import SegmenterSpec, register_segmenter
from wsseg.models.vgg_weights import (
    VGG16_BLOCK_CHANNELS,
    copy_checked_,
    init_vgg_weights_,
    load_module_tensors_,
    read_vgg16_tensors,
    resolve_vgg16_state_dict,
    scale_channels,
)

FC_CHANNELS = 4096


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """ConvTranspose2d weight that upsamples each channel on its own, bilinearly."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float32) - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = taps[:, None] * taps[None, :]
    return weight


def crop_to(x: Tensor, reference: Tensor) -> Tensor:
    return x[..., : reference.shape[-2], : reference.shape[-1]]


class FCN8s(nn.Module):
    """FCN-8s on VGG16.

    Args:
        num_classes: output channels.
        width: multiplies every channel count, fc6/fc7's 4096 included (for CPU demos);
            ImageNet weights need 1.0.
        dropout: Dropout2d after fc6 and fc7 (0.5 in the paper).
    """

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.width = width
        register_normalisation(self)

        # blocks[k] ends with its max-pool; pool3 = output of blocks[2], pool4 of blocks[3].
        self.blocks = nn.ModuleList()
        in_channels = 3
        for channels in VGG16_BLOCK_CHANNELS:
            layers: list[nn.Module] = []
            for out_channels in (scale_channels(c, width) for c in channels):
                layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]
                in_channels = out_channels
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            self.blocks.append(nn.Sequential(*layers))
        pool3_channels = scale_channels(VGG16_BLOCK_CHANNELS[2][-1], width)
        pool4_channels = scale_channels(VGG16_BLOCK_CHANNELS[3][-1], width)
        fc_channels = scale_channels(FC_CHANNELS, width)

        self.fc6 = nn.Conv2d(in_channels, fc_channels, 7, padding=3)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout2d(dropout)

        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        self.score_pool4 = nn.Conv2d(pool4_channels, num_classes, 1)
        self.score_pool3 = nn.Conv2d(pool3_channels, num_classes, 1)
        # kernel 2s, padding s/2: output pixel i sits at input coordinate (i + 0.5)/s − 0.5,
        # the same geometry as the pooling it undoes.
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, padding=1, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, padding=1,
                                                bias=False)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, padding=4,
                                           bias=False)

        self._init_weights()

    def _init_weights(self) -> None:
        init_vgg_weights_(self)
        # As in the reference: score layers start at zero, so training begins from a flat
        # prediction instead of noise amplified by the upsampling.
        for score in (self.score_fr, self.score_pool4, self.score_pool3):
            nn.init.zeros_(score.weight)
        for up in (self.upscore2, self.upscore_pool4, self.upscore8):
            with torch.no_grad():
                up.weight.copy_(bilinear_kernel(up.in_channels, up.kernel_size[0]))

    def forward(self, x: Tensor) -> Tensor:
        h = (x - self.mean) / self.std
        h = self.blocks[1](self.blocks[0](h))
        pool3 = self.blocks[2](h)
        pool4 = self.blocks[3](pool3)
        h = self.blocks[4](pool4)
        h = self.dropout(self.relu(self.fc6(h)))
        h = self.dropout(self.relu(self.fc7(h)))

        score = self.upscore2(self.score_fr(h))
        score_pool4 = self.score_pool4(pool4)
        score = self.upscore_pool4(crop_to(score, score_pool4) + score_pool4)
        score_pool3 = self.score_pool3(pool3)
        score = self.upscore8(crop_to(score, score_pool3) + score_pool3)
        return crop_to(score, x)


def load_fcn8s_vgg16_imagenet(model: FCN8s, weights) -> FCN8s:
    """Load torchvision ImageNet VGG16 (no BN) weights into the convs and fc6/fc7 of `model`.

    `weights`: a path to a torchvision `vgg16` state dict file, such a state dict, or
    `torchvision.models.VGG16_Weights.IMAGENET1K_V1` (which downloads). The 13 convs go in
    order; `classifier.0` (25088→4096) is reshaped into fc6 (4096×512×7×7) and `classifier.3`
    into fc7; the 1000-class `classifier.6` is not used. VGG16-BN weights are refused (FCN-8s
    has no BN). Any other extra, missing or wrongly shaped tensor is an error naming it.
    """
    if model.width != 1.0:
        raise ValueError(f"ImageNet VGG16 weights need width=1.0, the model has width={model.width}")
    vgg = read_vgg16_tensors(resolve_vgg16_state_dict(weights))
    if vgg.has_batch_norm:
        raise ValueError("these are VGG16-BN weights (features.1 is a BatchNorm); FCN-8s has no "
                         "BN and needs plain VGG16 weights")

    convs = [m for block in model.blocks for m in block if isinstance(m, nn.Conv2d)]
    names = {id(m): n for n, m in model.named_modules()}
    for conv, (prefix, tensors) in zip(convs, vgg.convs):
        load_module_tensors_(conv, names[id(conv)], tensors, prefix)

    expected = {f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")}
    missing, unexpected = expected - vgg.classifier.keys(), vgg.classifier.keys() - expected
    if missing:
        raise KeyError(f"missing key(s) {sorted(missing)}: fc6/fc7 come from the VGG16 classifier")
    if unexpected:
        raise KeyError(f"unexpected key(s) {sorted(unexpected)}")
    for fc, index in ((model.fc6, 0), (model.fc7, 3)):
        key = f"classifier.{index}"
        name = names[id(fc)]
        weight = vgg.classifier[f"{key}.weight"]
        # A Linear over the flattened C×7×7 pool5 is a 7×7 conv with the same numbers.
        as_linear = (fc.weight.shape[0], fc.weight[0].numel())
        if tuple(weight.shape) != as_linear:
            raise ValueError(f"{key}.weight has shape {tuple(weight.shape)}, {name} needs "
                             f"{as_linear} to reshape to {tuple(fc.weight.shape)}")
        copy_checked_(fc.weight, weight.reshape(fc.weight.shape), f"{key}.weight", f"{name}.weight")
        copy_checked_(fc.bias, vgg.classifier[f"{key}.bias"], f"{key}.bias", f"{name}.bias")
    return model


# Every skip is scored and every upsampling layer maps class maps: all of them have num_classes channels.
FCN8S_HEAD = ("score_fr.", "score_pool4.", "score_pool3.", "upscore2.", "upscore_pool4.", "upscore8.")
register_segmenter(SegmenterSpec("fcn8s", FCN8s, encoder_prefixes=("blocks.", "fc6.", "fc7."), head_prefixes=FCN8S_HEAD,
                                  vgg_loader=load_fcn8s_vgg16_imagenet))
