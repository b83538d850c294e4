"""Wide ResNet-38 ("model A1", Wu et al. 2019) as used by the single-stage segmenter (Araslanov & Roth, CVPR 2020).

Pre-activation residual blocks, bias-free convolutions, output stride 8 through dilation in
b5-b7. Parameter names follow the authors' ImageNet checkpoint
(`ilsvrc-cls_rna-a1_cls1000_ep-0001.pth`) so that it loads by key, never by position.

`width` scales every channel count (keys stay the same, shapes shrink) so that tests and CPU
demos can run the real topology cheaply; ImageNet weights only fit at width 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsseg.models.normalization import register_normalisation


# Top-level names a converted ImageNet checkpoint may carry for its 1000-way classifier
# (the released file has none, but converted re-exports do); they are not part of the backbone.
CLASSIFIER_PREFIXES = ("fc", "linear", "classifier")


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class BasicBlock(nn.Module):
    """Pre-activation block: two 3×3 convs; the shortcut sees the BN-ReLU'd input."""

    def __init__(self, in_ch, mid_ch, out_ch, stride=1, first_dilation=None, dilation=1):
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, mid_ch, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        # A projection only where the identity cannot be added; otherwise the raw input
        # (not its BN-ReLU) is the shortcut, as in pre-activation ResNets.
        self.conv_branch1 = (nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
                             if in_ch != out_ch or stride != 1 else None)

    def forward(self, x):
        b = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(b)
        branch = self.conv_branch2a(b)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(branch)))
        return shortcut + branch


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck (1×1 → dilated 3×3 → 1×1) with channel dropout inside."""

    def __init__(self, in_ch, out_ch, dilation=1, dropout=0.0):
        super().__init__()
        quarter, half = out_ch // 4, out_ch // 2
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, quarter, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(quarter)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(quarter, half, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(half)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(half, out_ch, 1, bias=False)
        # Always a projection: in and out widths differ in both places this block is used.
        self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x):
        b = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(b)
        branch = self.conv_branch2a(b)
        branch = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch))))
        branch = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch))))
        return shortcut + branch


class ResNet38(nn.Module):
    """Returns {"conv3": stride-4 features (b3_2 output), "conv6": stride-8 relu(bn7(b7))}.

    Input: float N×3×H×W RGB in [0, 1]; ImageNet normalisation happens here.
    Frozen, as in Araslanov & Roth's published training code: conv1a and all of b2 (weights), and every BN: affine without grad and
    running statistics fixed, because batches of a few crops would wreck ImageNet statistics.
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        c = {n: scaled(n, width) for n in (64, 128, 256, 512, 1024, 2048, 4096)}
        self.width = width
        self.shallow_channels = c[256]
        self.deep_channels = c[4096]

        self.conv1a = nn.Conv2d(3, c[64], 3, padding=1, bias=False)
        self.b2 = BasicBlock(c[64], c[128], c[128], stride=2)
        self.b2_1 = BasicBlock(c[128], c[128], c[128])
        self.b2_2 = BasicBlock(c[128], c[128], c[128])
        self.b3 = BasicBlock(c[128], c[256], c[256], stride=2)
        self.b3_1 = BasicBlock(c[256], c[256], c[256])
        self.b3_2 = BasicBlock(c[256], c[256], c[256])
        self.b4 = BasicBlock(c[256], c[512], c[512], stride=2)
        self.b4_1 = BasicBlock(c[512], c[512], c[512])
        self.b4_2 = BasicBlock(c[512], c[512], c[512])
        self.b4_3 = BasicBlock(c[512], c[512], c[512])
        self.b4_4 = BasicBlock(c[512], c[512], c[512])
        self.b4_5 = BasicBlock(c[512], c[512], c[512])
        # From here on dilation replaces striding: output stride stays 8.
        self.b5 = BasicBlock(c[512], c[512], c[1024], first_dilation=1, dilation=2)
        self.b5_1 = BasicBlock(c[1024], c[512], c[1024], dilation=2)
        self.b5_2 = BasicBlock(c[1024], c[512], c[1024], dilation=2)
        self.b6 = BottleneckBlock(c[1024], c[2048], dilation=4, dropout=0.3)
        self.b7 = BottleneckBlock(c[2048], c[4096], dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(c[4096])

        # Not persistent: the state dict must hold exactly the checkpoint's tensors.
        register_normalisation(self)

        for module in (self.conv1a, self.b2, self.b2_1, self.b2_2):
            module.requires_grad_(False)
        for bn in self.batch_norms():
            bn.requires_grad_(False)

    def batch_norms(self):
        return [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]

    def train(self, mode: bool = True):
        # Dropout in b6/b7 follows `mode`; the BNs never leave eval mode.
        super().train(mode)
        for bn in self.batch_norms():
            bn.eval()
        return self

    def forward(self, image):
        x = (image - self.mean) / self.std
        x = self.conv1a(x)
        for block in (self.b2, self.b2_1, self.b2_2, self.b3, self.b3_1, self.b3_2):
            x = block(x)
        conv3 = x
        for block in (self.b4, self.b4_1, self.b4_2, self.b4_3, self.b4_4, self.b4_5,
                      self.b5, self.b5_1, self.b5_2, self.b6, self.b7):
            x = block(x)
        conv6 = F.relu(self.bn7(x))
        return {"conv3": conv3, "conv6": conv6}


class CheckpointMismatchError(KeyError):
    """The checkpoint does not fit the backbone; the message lists every offending key."""

    def __str__(self):  # KeyError would quote the message and hide its line breaks
        return str(self.args[0])


def checked_resnet38_state(path_or_state_dict, own: Mapping[str, torch.Tensor], width: float = 1.0) -> dict:
    """The authors' ImageNet weights as a state dict for a ResNet-38 whose own state dict is `own`,
    every key and shape checked (on any device: a model on the meta device checks a file without
    the memory of a real one).

    Accepts a path or a state dict; strips a DataParallel `module.` prefix; drops classifier
    keys; tolerates missing `num_batches_tracked` (the authors' file predates it). Any missing,
    unexpected or wrongly shaped backbone key raises one error that lists them all.
    """
    if isinstance(path_or_state_dict, (str, Path)):
        state = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
    else:
        state = path_or_state_dict
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a state dict, got {type(state).__name__}")
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]

    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.split(".")[0].startswith(CLASSIFIER_PREFIXES)}

    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong_shape:
        lines = [f"ResNet-38 checkpoint does not fit (width={width}):"]
        for title, keys in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", wrong_shape)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise CheckpointMismatchError("\n".join(lines))
    return state


def load_resnet38_imagenet(model: ResNet38, path_or_state_dict) -> None:
    """Loads the authors' ImageNet weights by key, strictly for the backbone (`checked_resnet38_state`)."""
    own = model.state_dict()
    state = checked_resnet38_state(path_or_state_dict, own, model.width)
    for k in own:
        if k not in state:  # only num_batches_tracked can get here
            state[k] = own[k]
    model.load_state_dict(state, strict=True)


def main(argv=None) -> int:
    """`python -m wsseg.models.resnet38 FILE`: check a ResNet-38 weights file and print its sha256."""
    import argparse
    import hashlib
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("file")
    args = parser.parse_args(argv)
    digest = hashlib.sha256()
    with open(args.file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    try:
        load_resnet38_imagenet(ResNet38(), args.file)
    except (CheckpointMismatchError, RuntimeError, OSError) as err:
        print(f"error: {args.file}: {err}", file=sys.stderr)
        return 1
    print(f"{args.file}: every ResNet-38 key and shape matches; sha256 {digest.hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
