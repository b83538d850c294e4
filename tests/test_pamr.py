import math

import pytest
import torch
import torch.nn.functional as F

from wsseg.pseudo_labels.pamr import pamr, pamr_affinity, refine_with_pamr


def _pamr_by_loops(image, masks, dilations, num_iter):
    """PAMR as Araslanov & Roth (CVPR 2020) define it, evaluated pixel by pixel, neighbour by
    neighbour, in plain Python floats."""
    _, channels, height, width = image.shape
    num_masks = masks.shape[1]
    img = image[0].tolist()

    def at(plane, y, x):  # replicate padding = clamped coordinates
        return plane[min(max(y, 0), height - 1)][min(max(x, 0), width - 1)]

    stencil = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    neighbours = [o for o in stencil if o != (0, 0)]
    alpha = {}
    for y in range(height):
        for x in range(width):
            kappa = [0.0] * len(neighbours)
            for k in range(channels):
                values = [at(img[k], y + dy, x + dx) for dy, dx in stencil]
                mean = sum(values) / len(values)
                sigma = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                for j, (dy, dx) in enumerate(neighbours):
                    kappa[j] += -abs(img[k][y][x] - at(img[k], y + dy, x + dx)) / (1e-8 + 0.1 * sigma)
            kappa = [v / channels for v in kappa]
            top = max(kappa)
            exps = [math.exp(v - top) for v in kappa]
            alpha[y, x] = [e / sum(exps) for e in exps]

    m = masks[0].tolist()
    for _ in range(num_iter):
        m = [
            [
                [
                    sum(a * at(m[c], y + dy, x + dx) for a, (dy, dx) in zip(alpha[y, x], neighbours))
                    for x in range(width)
                ]
                for y in range(height)
            ]
            for c in range(num_masks)
        ]
    return torch.tensor(m, dtype=torch.float64).unsqueeze(0)


def _pamr_by_stacking(image, masks, dilations, num_iter):
    """PAMR as wsseg computed it before the one-offset-at-a-time rewrite: every shifted copy
    stacked into one N×C×P×H×W tensor, weighted by α and summed. Returns (refined masks, α)."""
    pad = max(dilations)
    height, width = image.shape[-2:]

    def stacked(x, include_centre):
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        return torch.stack(
            [
                padded[..., pad + dy * d : pad + dy * d + height, pad + dx * d : pad + dx * d + width]
                for d in dilations
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
                if include_centre or (dy, dx) != (0, 0)
            ],
            dim=2,
        )

    sigma = stacked(image, True).std(dim=2, keepdim=True)
    kappa = -(image.unsqueeze(2) - stacked(image, False)).abs() / (1e-8 + 0.1 * sigma)
    alpha = F.softmax(kappa.mean(dim=1), dim=1)
    for _ in range(num_iter):
        masks = (stacked(masks, False) * alpha.unsqueeze(1)).sum(dim=2)
    return masks, alpha


def test_pamr_matches_per_pixel_loop_evaluation():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 9, 11, generator=gen, dtype=torch.float64)
    masks = torch.rand(1, 3, 9, 11, generator=gen, dtype=torch.float64)
    expected = _pamr_by_loops(image, masks, (1, 2, 4), num_iter=3)
    result = pamr(image, masks, dilations=(1, 2, 4), num_iter=3)
    torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-12)


def test_affinity_rows_sum_to_one_and_masks_stay_normalised():
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 20, 17, generator=gen)
    alpha = pamr_affinity(image)
    assert alpha.shape == (2, 48, 20, 17)
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(1), torch.ones(2, 20, 17))

    masks = torch.softmax(3 * torch.randn(2, 5, 20, 17, generator=gen), dim=1)
    refined = pamr(image, masks)
    torch.testing.assert_close(refined.sum(1), torch.ones(2, 20, 17))
    # Convex combinations of neighbours: no value leaves the input's range.
    assert refined.min() >= masks.min() - 1e-6 and refined.max() <= masks.max() + 1e-6


def test_constant_image_gives_uniform_weights_and_preserves_constant_masks():
    image = torch.full((1, 3, 12, 10), 0.4)
    torch.testing.assert_close(pamr_affinity(image), torch.full((1, 48, 12, 10), 1 / 48))
    masks = torch.tensor([0.2, 0.5, 0.3]).view(1, 3, 1, 1).expand(1, 3, 12, 10)
    torch.testing.assert_close(pamr(image, masks), masks)
    # Away from the border no neighbour is clamped, so one step is a mean over the 48 offsets.
    gen = torch.Generator().manual_seed(2)
    big_image = torch.full((1, 3, 60, 60), 0.4)
    mask = torch.rand(1, 1, 60, 60, generator=gen)
    one_step = pamr(big_image, mask, num_iter=1)
    centre = (slice(None), slice(None), slice(24, 36), slice(24, 36))
    expected = sum(
        torch.roll(mask, shifts=(-dy * d, -dx * d), dims=(2, 3))
        for d in (1, 2, 4, 8, 12, 24) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
    ) / 48
    torch.testing.assert_close(one_step[centre], expected[centre])


def test_pamr_is_pure_and_refine_resizes_and_detaches():
    gen = torch.Generator().manual_seed(3)
    image_full = torch.rand(1, 3, 33, 41, generator=gen)
    logits = torch.randn(1, 4, 9, 11, generator=gen, requires_grad=True)
    masks = torch.softmax(logits, dim=1)
    masks_before = masks.detach().clone()
    refined = refine_with_pamr(image_full, masks, num_iter=2)
    assert refined.shape == masks.shape and not refined.requires_grad
    torch.testing.assert_close(masks.detach(), masks_before)
    image = F.interpolate(image_full, size=(9, 11), mode="bilinear", align_corners=True)
    torch.testing.assert_close(refined, pamr(image, masks_before, num_iter=2))


def test_pamr_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="resize the image"):
        pamr(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match="dilations"):
        pamr(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 8, 8), dilations=())


@pytest.mark.parametrize(
    "batch, num_masks, height, width, dilations, num_iter, blocky",
    [
        (1, 21, 81, 81, (1, 2, 4, 8, 12, 24), 3, False),
        (2, 5, 31, 29, (1, 2, 4, 8, 12, 24), 3, False),
        (2, 4, 17, 23, (1, 2, 4, 8, 12, 24), 3, True),  # smaller than the largest dilation
        (1, 3, 7, 5, (1, 3, 9), 3, False),
        (2, 6, 40, 33, (1, 2, 4, 8, 12, 24), 3, True),
        (2, 3, 13, 19, (1, 2, 4, 8, 12, 24), 0, False),
    ],
)
def test_pamr_matches_the_stacking_implementation(
    batch, num_masks, height, width, dilations, num_iter, blocky
):
    gen = torch.Generator().manual_seed(height * width + batch)
    if blocky:
        # Flat patches make σ small or zero, where κ is largest and most sensitive to rounding.
        coarse = torch.rand(batch, 3, height // 4 + 1, width // 4 + 1, generator=gen)
        image = F.interpolate(coarse, size=(height, width), mode="nearest")
    else:
        image = torch.rand(batch, 3, height, width, generator=gen)
    masks = torch.softmax(3 * torch.randn(batch, num_masks, height, width, generator=gen), dim=1)
    expected, expected_alpha = _pamr_by_stacking(image, masks, dilations, num_iter)
    torch.testing.assert_close(pamr_affinity(image, dilations), expected_alpha, rtol=0, atol=1e-5)
    torch.testing.assert_close(pamr(image, masks, dilations, num_iter), expected, rtol=0, atol=1e-5)


def test_gradients_flow_through_pamr():
    gen = torch.Generator().manual_seed(4)
    image = torch.rand(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    masks = torch.rand(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda i, m: pamr(i, m, dilations=(1, 2), num_iter=2), (image, masks), fast_mode=True
    )


def test_refine_with_pamr_is_float32_under_bf16_autocast():
    gen = torch.Generator().manual_seed(5)
    image_full = torch.rand(2, 3, 40, 36, generator=gen)
    masks = torch.softmax(2 * torch.randn(2, 5, 20, 18, generator=gen), dim=1)
    expected = refine_with_pamr(image_full, masks, num_iter=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = refine_with_pamr(image_full, masks, num_iter=3)
        from_bf16 = refine_with_pamr(image_full.bfloat16(), masks.bfloat16(), num_iter=3)
    assert result.dtype == from_bf16.dtype == torch.float32
    torch.testing.assert_close(result, expected, rtol=0, atol=0)
    # bf16 inputs are widened first, so only their own rounding differs from the float32 run.
    widened = refine_with_pamr(image_full.bfloat16().float(), masks.bfloat16().float(), num_iter=3)
    torch.testing.assert_close(from_bf16, widened, rtol=0, atol=0)
