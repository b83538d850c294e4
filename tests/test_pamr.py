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
