"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR 2020).

Each pixel's mask is replaced, `num_iter` times, by a weighted average of its neighbours' masks,
the weights being an image-dependent affinity that is computed once:

    neighbours  j: the 8 pixels of the 3×3 stencil at offset d, for every dilation d
                   (replicate padding), 8·len(dilations) in all, the pixel itself excluded;
    σ_ik        = unbiased std of colour channel k over the 9·len(dilations) stencil values
                   (the centre is counted once per dilation);
    κ_ijk       = −|I_ik − I_jk| / (1e-8 + 0.1·σ_ik);
    α_ij        = softmax over j of mean_k κ_ijk;
    m_i        ← Σ_j α_ij m_j.

Neighbours are gathered by replicate padding and slicing into one N×C×P×H×W tensor, so each
step is a handful of tensor operations (measured faster on CPU than one-hot convolutions or
index_select gathering).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_DILATIONS = (1, 2, 4, 8, 12, 24)
DEFAULT_NUM_ITER = 10


def _stencil_offsets(dilations: Sequence[int], include_centre: bool) -> list[tuple[int, int]]:
    """(dy, dx) of the 3×3 stencil at each dilation, dilation-major."""
    offsets = []
    for d in dilations:
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                if include_centre or (dy, dx) != (0, 0):
                    offsets.append((dy, dx))
    return offsets


def _stencil_values(x: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """N×C×H×W → N×C×P×H×W: the value at each (dy, dx) offset, replicate padding at the border.

    One replicate pad by the largest offset serves every dilation: replicate padding clamps
    coordinates to the image, and a clamp does not depend on how wide the pad is.
    """
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return torch.stack(
        [padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width] for dy, dx in offsets],
        dim=2,
    )


def _check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    dilations = tuple(int(d) for d in dilations)
    if not dilations or min(dilations) < 1:
        raise ValueError(f"PAMR dilations must be positive integers, got {dilations}")
    return dilations


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS) -> torch.Tensor:
    """The PAMR weights α: N×P×H×W, P = 8·len(dilations), summing to one over P.

    `image` is N×K×H×W (K colour channels), at the resolution of the masks to be refined.
    """
    if image.dim() != 4 or not image.is_floating_point():
        raise ValueError(
            f"image must be a floating N×K×H×W tensor, got {tuple(image.shape)} {image.dtype}"
        )
    dilations = _check_dilations(dilations)
    # Unbiased std over all 9·len(dilations) stencil values, the centre once per dilation.
    sigma = _stencil_values(image, _stencil_offsets(dilations, True)).std(dim=2, keepdim=True)
    neighbours = _stencil_values(image, _stencil_offsets(dilations, False))
    kappa = -(image.unsqueeze(2) - neighbours).abs() / (1e-8 + 0.1 * sigma)
    return F.softmax(kappa.mean(dim=1), dim=1)


def pamr(
    image: torch.Tensor,
    masks: torch.Tensor,
    dilations: Sequence[int] = DEFAULT_DILATIONS,
    num_iter: int = DEFAULT_NUM_ITER,
) -> torch.Tensor:
    """Refine `masks` (N×C×H×W) with the affinities of `image` (N×K×H×W, same H×W).

    Pure: neither input is modified. Gradients flow if the inputs carry them; the training
    step calls `refine_with_pamr`, which detaches the masks as the method prescribes.
    """
    if masks.dim() != 4 or image.dim() != 4:
        raise ValueError(f"image and masks must be 4-D, got {tuple(image.shape)} and {tuple(masks.shape)}")
    if image.shape[0] != masks.shape[0] or image.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"image {tuple(image.shape)} and masks {tuple(masks.shape)} must share batch size and H×W; "
            "resize the image to the masks first (refine_with_pamr does)"
        )
    if num_iter < 0:
        raise ValueError(f"num_iter must be >= 0, got {num_iter}")
    dilations = _check_dilations(dilations)
    # α stays fixed over the iterations: it depends on the image only.
    alpha = pamr_affinity(image.to(masks.dtype), dilations).unsqueeze(1)
    offsets = _stencil_offsets(dilations, False)
    refined = masks
    for _ in range(num_iter):
        refined = (_stencil_values(refined, offsets) * alpha).sum(dim=2)
    return refined


def refine_with_pamr(
    image_full: torch.Tensor,
    masks: torch.Tensor,
    dilations: Sequence[int] = DEFAULT_DILATIONS,
    num_iter: int = DEFAULT_NUM_ITER,
) -> torch.Tensor:
    """PAMR as used in training: the image resized to the masks (bilinear, align_corners=True).

    The refined masks only feed pseudo labels, never a gradient, so the masks are detached and
    no graph is recorded.
    """
    with torch.no_grad():
        image = F.interpolate(
            image_full.to(masks.dtype), size=masks.shape[-2:], mode="bilinear", align_corners=True
        )
        return pamr(image, masks.detach(), dilations=dilations, num_iter=num_iter)
