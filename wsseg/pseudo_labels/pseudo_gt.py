"""Pseudo labels from refined masks and the self-supervised segmentation loss (Araslanov & Roth, CVPR 2020).

Mask and logit layout: with `background=True` (the paper) channel 0 is the background (the
constant-logit channel) and channels 1..C the C tagged classes in tag order; with
`background=False` (aerial data where every class has a learned channel) the C channels are the
C tagged classes and there is no background threshold or requirement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsseg.datasets.base import IGNORE_INDEX


def _check_tags(image_tags: torch.Tensor, num_channels: int, batch_size: int, background: bool) -> torch.Tensor:
    num_tagged = num_channels - 1 if background else num_channels
    if image_tags.shape != (batch_size, num_tagged):
        where = "background first" if background else "no background channel"
        raise ValueError(
            f"image_tags must be N×C = {batch_size}×{num_tagged} for {num_channels} channels "
            f"({where}), got {tuple(image_tags.shape)}"
        )
    return image_tags.bool()


def _required(tagged: torch.Tensor, background: bool) -> torch.Tensor:
    """Channels that must be present: the background (if any) always, plus the tagged classes."""
    return torch.cat([torch.ones_like(tagged[:, :1]), tagged], dim=1) if background else tagged


def pseudo_labels_from_masks(
    masks: torch.Tensor,
    image_tags: torch.Tensor,
    bg_threshold_scale: float = 0.7,
    fg_threshold_scale: float = 0.6,
    min_threshold: float = 0.2,
    ignore_index: int = IGNORE_INDEX,
    background: bool = True,
) -> torch.Tensor:
    """Hard labels N×H×W (int64) from PAMR masks N×(C+1)×H×W already at crop size.

    Classes not in `image_tags` (N×C multi-hot) are zeroed; the background is always kept.
    A pixel takes class c when its mask exceeds (strictly) max(scale·max over the image's
    pixels of channel c, min_threshold), scale 0.7 for the background and 0.6 for the others.
    A pixel above no threshold or above several is `ignore_index`.
    """
    if masks.dim() != 4:
        raise ValueError(f"masks must be N×(C+1)×H×W, got {tuple(masks.shape)}")
    n, num_channels, _, _ = masks.shape
    present = _required(_check_tags(image_tags, num_channels, n, background), background)
    masks = masks * present[:, :, None, None]

    scale = masks.new_full((1, num_channels, 1, 1), fg_threshold_scale)
    if background:
        scale[:, 0] = bg_threshold_scale
    peak = masks.amax(dim=(2, 3), keepdim=True)
    threshold = (scale * peak).clamp(min=min_threshold)
    above = masks > threshold

    labels = above.long().argmax(dim=1)
    labels[above.sum(dim=1) != 1] = ignore_index
    return labels


def self_supervised_loss(
    logits: torch.Tensor,
    pseudo_labels: torch.Tensor,
    image_tags: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    background: bool = True,
    gating: str = "image",
) -> torch.Tensor:
    """Class-balanced cross-entropy of the C+1 logits against the pseudo labels (a scalar).

    Per image, a pixel labelled c weighs (N − N_c)/(1 + N), N the image's non-ignored pseudo
    pixels and N_c those of class c, so small classes are not drowned by large ones. The
    weighted cross-entropy is summed and divided by ALL H·W pixels of the crop (ignored ones
    count in the denominator). Which images count (`counting_images`): with `gating="image"`
    (the reference code) only those where the background and every tagged class got at least
    one pseudo pixel; with `gating="class"` every image with a pseudo pixel, its classes without
    one simply absent from its loss, which an image with many tags needs. The others contribute 0.
    The batch loss is the mean of the N per-image losses, the non-counting zeros included (as in
    the reference code: the per-image vector is averaged over the whole batch).

    `logits` N×(C+1)×h×w are upsampled (bilinear, align_corners=True) to the labels' H×W when
    the sizes differ.
    """
    if logits.dim() != 4 or pseudo_labels.dim() != 3 or logits.shape[0] != pseudo_labels.shape[0]:
        raise ValueError(
            f"logits must be N×(C+1)×H×W and pseudo_labels N×H×W, got {tuple(logits.shape)} "
            f"and {tuple(pseudo_labels.shape)}"
        )
    n, num_channels = logits.shape[:2]
    tagged = _check_tags(image_tags, num_channels, n, background)
    if logits.shape[-2:] != pseudo_labels.shape[-2:]:
        logits = F.interpolate(logits, size=pseudo_labels.shape[-2:], mode="bilinear", align_corners=True)

    safe_labels, valid, pixels_per_class = _pixels_per_class(pseudo_labels, num_channels, ignore_index, logits.dtype)
    pixels_total = pixels_per_class.sum(dim=1, keepdim=True)
    class_weight = (pixels_total - pixels_per_class) / (1 + pixels_total)
    pixel_weight = class_weight.gather(1, safe_labels) * valid

    cross_entropy = F.cross_entropy(logits, safe_labels.view_as(pseudo_labels), reduction="none")
    cross_entropy = cross_entropy.reshape(n, -1)
    per_image = (pixel_weight * cross_entropy).mean(dim=1)

    counts = _counting(pixels_per_class, _required(tagged, background), gating)
    return torch.where(counts, per_image, torch.zeros_like(per_image)).mean()


GATINGS = ("image", "class")


def _counting(pixels_per_class: torch.Tensor, required: torch.Tensor, gating: str) -> torch.Tensor:
    if gating == "image":
        return ((pixels_per_class > 0) | ~required).all(dim=1)
    if gating == "class":
        return pixels_per_class.sum(dim=1) > 0
    raise ValueError(f"unknown self-supervised gating {gating!r} ({', '.join(GATINGS)})")


def _pixels_per_class(pseudo_labels: torch.Tensor, num_channels: int, ignore_index: int, dtype=torch.float32):
    """Labels N×(H·W) with ignore set to 0, the valid mask, and the N×C pseudo-pixel counts."""
    labels = pseudo_labels.long().reshape(pseudo_labels.shape[0], -1)
    valid = labels != ignore_index
    if (labels[valid] >= num_channels).any() or (labels[valid] < 0).any():
        raise ValueError(f"pseudo labels must be in [0, {num_channels}) or {ignore_index}")
    safe_labels = labels.masked_fill(~valid, 0)
    pixels_per_class = torch.zeros(labels.shape[0], num_channels, device=labels.device, dtype=dtype)
    pixels_per_class.scatter_add_(1, safe_labels, valid.to(dtype))
    return safe_labels, valid, pixels_per_class


def counting_images(pseudo_labels: torch.Tensor, image_tags: torch.Tensor, num_channels: int,
                    ignore_index: int = IGNORE_INDEX, background: bool = True, gating: str = "image") -> torch.Tensor:
    """N booleans: which images the self-supervised loss learns from (see `self_supervised_loss`)."""
    tagged = _check_tags(image_tags, num_channels, pseudo_labels.shape[0], background)
    _, _, pixels_per_class = _pixels_per_class(pseudo_labels, num_channels, ignore_index)
    return _counting(pixels_per_class, _required(tagged, background), gating)
