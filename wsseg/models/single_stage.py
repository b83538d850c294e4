"""Single-stage weakly supervised segmenter (Araslanov & Roth, CVPR 2020).

One network trained from image-level tags only: a segmentation head whose softmax masks give
the class scores (normalised global weighted pooling + focal mask penalty), and whose own
refined masks (PAMR) become pseudo labels for a self-supervised loss on the same forward pass.

Channel layout (`background`):
- "constant" (the paper; ISPRS option A): channel 0 is a constant logit 1 standing for the
  background (VOC background, or one real class such as ISPRS clutter), channels 1..C are the
  C learned, scored classes. logits/masks are N×(C+1)×h×w, `cls` is N×C.
- "learned" (ISPRS option B): every class has its own learned channel and a score; there is no
  background channel. logits/masks are N×C×h×w, `cls` is N×C.
`ClassLayout` maps between a dataset's class order and these channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wsseg.models.backbones import build_backbone
from wsseg.models.heads import ASPP, GlobalCueInjection, StochasticGate
from wsseg.models.resnet38 import scaled
from wsseg.pseudo_labels import pseudo_gt
from wsseg.pseudo_labels.pamr import refine_with_pamr

# PAMR's dilations and iterations: the published ones (Araslanov & Roth, CVPR 2020).
PAMR_DILATIONS = (1, 2, 4, 8, 12, 24)
PAMR_ITER = 10


def resize(x, size):
    # As in the published code: every interpolation in the model and its losses is bilinear, align_corners=True.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def normalised_gwp(logits, masks):
    """nGWP score per channel: Σ_i m_i·y_i / (1 + Σ_i m_i); the 1 keeps empty masks near 0."""
    logits, masks = logits.flatten(2), masks.flatten(2)
    return (logits * masks).sum(-1) / (1.0 + masks.sum(-1))


def focal_mask_penalty(masks, p: float = 3.0, lam: float = 0.01):
    """(1 − m̄)^p · log(λ + m̄): strongly negative for a (nearly) empty mask, ~0 for a large one."""
    mean = masks.flatten(2).mean(-1)
    return (1.0 - mean).pow(p) * torch.log(lam + mean)


@dataclass(frozen=True)
class ClassLayout:
    """Which dataset class sits in which model channel.

    `background_index`: the dataset class played by the constant channel 0 (0 for VOC,
    clutter for ISPRS option A), or None to give every class a learned channel (option B).
    """

    num_dataset_classes: int
    background_index: int | None = 0

    @property
    def background(self) -> str:
        return "learned" if self.background_index is None else "constant"

    @property
    def scored_classes(self) -> list[int]:
        """Dataset class of each scored channel, i.e. of each column of `cls`."""
        return [c for c in range(self.num_dataset_classes) if c != self.background_index]

    @property
    def num_scored(self) -> int:
        return len(self.scored_classes)

    @property
    def channel_classes(self) -> list[int]:
        """Dataset class of each logit/mask channel."""
        bg = [] if self.background_index is None else [self.background_index]
        return bg + self.scored_classes

    def scored_tags(self, dataset_tags):
        """N×K dataset tags → N×C tags in `cls` order (the background column dropped)."""
        return dataset_tags[..., self.scored_classes]

    def to_dataset_order(self, channels, dim: int = -3):
        """Masks/probs with model channels along `dim` → dataset class order."""
        inverse = [self.channel_classes.index(c) for c in range(self.num_dataset_classes)]
        return channels.index_select(dim, torch.as_tensor(inverse, device=channels.device))

    def labels_to_dataset(self, channel_labels):
        """Argmax channel indices → dataset class indices (other values, e.g. 255, kept)."""
        lut = torch.arange(256, device=channel_labels.device)
        lut[: len(self.channel_classes)] = torch.as_tensor(self.channel_classes)
        return lut[channel_labels.long()]


def _conv_bn_relu(in_ch, out_ch, kernel_size):
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class SingleStageSegmenter(nn.Module):
    """Backbone → ASPP → skip fusion with GCI and stochastic gate → C+1 masks and C scores.

    `width` < 1 shrinks ResNet-38 and the head (for CPU tests/demos); `pretrained` is a path or
    state dict for the backbone (or a torchvision weights enum for vgg16/resnet50/101).
    """

    def __init__(self, num_classes: int, backbone: str = "resnet38", width: float = 1.0,
                 pretrained=None, background: str = "constant", focal_p: float = 3.0,
                 focal_lambda: float = 0.01, pamr_dilations=PAMR_DILATIONS, pamr_iter: int = PAMR_ITER,
                 sg_psi: float = 0.3, sg_test_mix: str = "literal", aspp_literal_bn: bool = True):
        super().__init__()
        if background not in ("constant", "learned"):
            raise ValueError(f"background must be 'constant' or 'learned', got {background!r}")
        self.num_classes = num_classes
        self.background = background
        self.focal_p, self.focal_lambda = focal_p, focal_lambda
        self.pamr_dilations, self.pamr_iter = tuple(pamr_dilations), pamr_iter

        self.backbone = build_backbone(backbone, width=width, pretrained=pretrained)
        shallow_ch, deep_ch = self.backbone.shallow_channels, self.backbone.deep_channels
        ch, skip_ch = scaled(256, width), scaled(48, width)

        self.aspp = ASPP(deep_ch, ch, literal_bn=aspp_literal_bn)
        self.skip = _conv_bn_relu(shallow_ch, skip_ch, 1)
        self.fuse = _conv_bn_relu(ch + skip_ch, ch, 3)
        self.gci = GlobalCueInjection(shallow_ch, ch)
        self.gate = StochasticGate(sg_psi, test_mix=sg_test_mix)
        classifier = nn.Conv2d(ch, num_classes, 1, bias=True)
        nn.init.kaiming_normal_(classifier.weight)
        self.classifier = nn.Sequential(
            _conv_bn_relu(ch, ch, 3), nn.Dropout(0.5),
            _conv_bn_relu(ch, ch, 3), nn.Dropout(0.1),
            classifier,
        )

    @property
    def num_outputs(self) -> int:
        return self.num_classes + (self.background == "constant")

    def _scored(self, per_channel):
        return per_channel[:, 1:] if self.background == "constant" else per_channel

    def forward(self, image, refine: bool | None = None):
        """image: N×3×H×W RGB in [0, 1]. `refine` (default: in training) adds PAMR masks.

        Returns {"cls": N×C, "logits"/"masks": N×(C+1)×H/4×W/4, ["masks_pamr": same]}.
        """
        shallow, deep = self.backbone(image)
        deep = self.aspp(deep)
        skip = self.skip(shallow)
        x_deep = self.fuse(torch.cat([resize(deep, skip.shape[-2:]), skip], 1))
        x_shallow = self.gci(shallow, x_deep)
        logits = self.classifier(self.gate(x_deep, x_shallow))
        if self.background == "constant":
            logits = torch.cat([torch.ones_like(logits[:, :1]), logits], 1)

        # Scores in fp32: sums over ~10^4 pixels lose too much in bf16 under autocast.
        logits = logits.float()
        masks = F.softmax(logits, dim=1)
        scores = normalised_gwp(logits, masks) + focal_mask_penalty(masks, self.focal_p,
                                                                    self.focal_lambda)
        out = {"cls": self._scored(scores), "logits": logits, "masks": masks}

        if self.training if refine is None else refine:
            out["masks_pamr"] = self.refine_masks(image, masks)
        return out

    def refine_masks(self, image, masks):
        """PAMR on the detached masks with the image resized to mask size (refine_with_pamr runs
        it in fp32, outside autocast and the graph)."""
        return refine_with_pamr(image, masks, dilations=self.pamr_dilations, num_iter=self.pamr_iter)

    @staticmethod
    def classification_loss(cls, tags):
        """Multi-label soft margin on the C scores (tags N×C in {0, 1})."""
        return F.multilabel_soft_margin_loss(cls, tags.to(cls.dtype))

    def self_supervised_targets(self, out, image_tags, crop_size):
        """Pseudo labels N×H×W from the PAMR masks upsampled to the crop.

        With background="learned" every channel is a tagged class: no background threshold."""
        masks = resize(out["masks_pamr"], crop_size)
        return pseudo_gt.pseudo_labels_from_masks(masks, image_tags, background=self.background == "constant")

    def self_supervised_loss(self, out, image_tags, crop_size, gating: str = "image", targets=None):
        """The balanced cross-entropy of the logits against `targets` (default: computed here)."""
        if targets is None:
            targets = self.self_supervised_targets(out, image_tags, crop_size)
        return pseudo_gt.self_supervised_loss(out["logits"], targets, image_tags,
                                              background=self.background == "constant", gating=gating)

    def param_groups(self, lr: float = 1e-3, weight_decay: float = 5e-4):
        """SGD groups of the published recipe: backbone ×1 (wd), new weights ×10 (wd), new biases ×20 (no wd).

        Frozen parameters are left out; BN weights of the head count as new weights and BN
        biases as new biases, as in the published recipe.
        """
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        groups = {"backbone": [], "new_weights": [], "new_biases": []}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if id(p) in backbone_ids:
                groups["backbone"].append(p)
            elif name.endswith(".bias"):
                groups["new_biases"].append(p)
            else:
                groups["new_weights"].append(p)
        settings = {"backbone": (lr, weight_decay), "new_weights": (10 * lr, weight_decay),
                    "new_biases": (20 * lr, 0.0)}
        return [{"name": name, "params": params, "lr": settings[name][0],
                 "weight_decay": settings[name][1]}
                for name, params in groups.items() if params]

    @torch.no_grad()
    def predict_masks(self, image, tags=None, scales=(1, 0.5, 1.5, 2), flip: bool = True,
                      bg_pow: float = 3, score_threshold: float = 0.1):
        """Multi-scale + flip inference for one image (3×H×W in [0, 1]) → (C+1)×H×W probs.

        Classes are restricted to `tags` (C,) when given, else to those whose sigmoid score,
        maxed over all passes, exceeds `score_threshold`. The upsampled softmax maps are
        averaged, then the background channel is raised to `bg_pow` (it tends to win at
        object borders otherwise). Not renormalised: argmax is what the callers use.
        """
        if image.dim() == 4:
            if image.shape[0] != 1:
                raise ValueError("predict_masks takes one image")
            image = image[0]
        was_training = self.training
        self.eval()
        height, width = image.shape[-2:]
        probs_sum, best_score = 0.0, None
        for scale in scales:
            size = (int(round(height * scale)), int(round(width * scale)))
            # Bicubic with antialias, like the published PIL resize; clamp the overshoot.
            scaled_image = F.interpolate(image[None], size=size, mode="bicubic",
                                         align_corners=False, antialias=True).clamp_(0, 1)
            batch = torch.cat([scaled_image, scaled_image.flip(-1)]) if flip else scaled_image
            out = self(batch, refine=False)
            masks = resize(out["masks"], size)
            if flip:
                masks = torch.stack([masks[0], masks[1].flip(-1)])
            # The published merge resizes to the original size with align_corners=False.
            masks = F.interpolate(masks, size=(height, width), mode="bilinear",
                                  align_corners=False)
            probs_sum = probs_sum + masks.sum(0)
            pass_scores = torch.sigmoid(out["cls"]).amax(0)
            best_score = pass_scores if best_score is None else torch.maximum(best_score,
                                                                               pass_scores)
        self.train(was_training)

        keep = (best_score > score_threshold) if tags is None else tags.reshape(-1).bool()
        probs = probs_sum / (len(scales) * (2 if flip else 1))
        first_scored = 1 if self.background == "constant" else 0
        probs[first_scored:] *= keep.to(device=probs.device, dtype=probs.dtype)[:, None, None]
        if self.background == "constant":
            probs[0] = probs[0].pow(bg_pow)
        return probs
