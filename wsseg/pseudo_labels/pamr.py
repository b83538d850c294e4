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

Neighbours are views into one replicate-padded copy of the input, taken one offset at a time:
σ is a running sum and then a running sum of squared deviations, κ is written offset by offset
into its N×P×H×W plane, and each step accumulates `step.addcmul_(shifted, α_p)` over the P
offsets. Nothing of size P×C×H×W (nor K×P×H×W) is ever built, so the working set stays a few
mask-sized maps; the stacked N×C×P×H×W tensor this replaced was ~400 MB per step at 12×360×480
and made every step memory-bound.

Why one offset at a time: on 2 CPU threads it beat, for both an 81² crop and a 360×480 frame,
stacking the offsets (4–10× slower, memory-bound), per-dilation `F.unfold` or one-hot grouped
convolutions (the published module's gathering, 8–20× slower) and classes innermost (1.6–2.7×
slower); bands of 64 rows were 20 % faster on the frame but 1.6× slower on crops. Outputs agree with the published module (visinf/1-stage-wseg) to float32 rounding.
`benchmarks/bench_pseudo_labels.py --published` times the two side by side (README, Speed).
The price is ~900 short operations per call: on an oversubscribed machine each can wait for a
descheduled sibling thread, so PAMR is best run with one thread per process there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_DILATIONS = (1, 2, 4, 8, 12, 24)
DEFAULT_NUM_ITER = 10


def _neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(dy, dx) of the 3×3 stencil at each dilation, centre excluded, dilation-major (the
    published order, so α's P axis lines up with the published module's)."""
    return [
        (dy, dx)
        for d in dilations
        for dy in (-d, 0, d)
        for dx in (-d, 0, d)
        if (dy, dx) != (0, 0)
    ]


def _shifted_views(x: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """N×C×H×W → one N×C×H×W view per (dy, dx) offset, replicate padding at the border.

    The views share one replicate pad by the largest offset, which serves every dilation:
    replicate padding clamps coordinates to the image, and a clamp does not depend on how wide
    the pad is. Nothing is copied but the pad.
    """
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return [padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width] for dy, dx in offsets]


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
    batch, channels, height, width = image.shape
    neighbours = _shifted_views(image, _neighbour_offsets(dilations))
    # Unbiased std over all 9·len(dilations) stencil values, the centre once per dilation, in
    # two passes (mean, then squared deviations): one pass of Σv² − n·mean² would cancel
    # catastrophically in flat regions, where σ is small and κ most sensitive to it.
    centre_count = len(dilations)
    count = len(neighbours) + centre_count
    total = image * centre_count
    for shifted in neighbours:
        total.add_(shifted)
    mean = total / count
    squares = (image - mean).square() * centre_count
    for shifted in neighbours:
        deviation = shifted - mean
        squares.addcmul_(deviation, deviation)
    scale = 1e-8 + 0.1 * (squares / (count - 1)).sqrt()
    # Σ_k |I_ik − I_jk| / scale_ik per offset, written straight into its N×H×W plane, so no
    # K×P×H×W difference stack exists; dividing by −K then gives mean_k κ_ijk.
    kappa = image.new_empty(batch, len(neighbours), height, width)
    for p, shifted in enumerate(neighbours):
        kappa[:, p] = ((image - shifted).abs() / scale).sum(dim=1)
    return F.softmax(kappa.div_(-channels), dim=1)


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
    alpha = pamr_affinity(image.to(masks.dtype), dilations)
    offsets = _neighbour_offsets(dilations)
    refined = masks
    for _ in range(num_iter):
        neighbours = _shifted_views(refined, offsets)
        # One offset at a time into one accumulator: the working set stays at two C×H×W maps
        # and an N×1×H×W plane of α, broadcast over the classes.
        step = neighbours[0] * alpha[:, :1]
        for p in range(1, len(neighbours)):
            step.addcmul_(neighbours[p], alpha[:, p : p + 1])
        refined = step
    return refined


def refine_with_pamr(
    image_full: torch.Tensor,
    masks: torch.Tensor,
    dilations: Sequence[int] = DEFAULT_DILATIONS,
    num_iter: int = DEFAULT_NUM_ITER,
) -> torch.Tensor:
    """PAMR as used in training: the image resized to the masks (bilinear, align_corners=True).

    The refined masks only feed pseudo labels, never a gradient, so the masks are detached and
    no graph is recorded. Computed and returned in float32 whatever autocast or the inputs say.
    """
    # float32 even in a bf16 mixed-precision step: the affinity softmax and ten repeated
    # averages lose too much in bf16 (8 mantissa bits), and bf16 elementwise ops are slower on
    # CPU than float32 ones.
    with torch.no_grad(), torch.autocast(device_type=masks.device.type, enabled=False):
        image = F.interpolate(
            image_full.float(), size=masks.shape[-2:], mode="bilinear", align_corners=True
        )
        return pamr(image, masks.detach().float(), dilations=dilations, num_iter=num_iter)
