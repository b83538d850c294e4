"""Property-based tests (hypothesis): invariants that must hold for any input, not just the examples
the other tests pick."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wsseg.core.evaluate import sliding_window_logits
from wsseg.core.metrics import confusion_matrix
from wsseg.datasets.base import IGNORE_INDEX
from wsseg.datasets.colour import decode_colour_mask, encode_colour_mask, save_index_png
from wsseg.datasets.image_files import read_index_png
from wsseg.datasets.splits import make_split
from wsseg.datasets.tags import grid_crops, tags_of_crop

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def palettes_and_masks(draw):
    num_classes = draw(st.integers(1, 12))
    palette = draw(st.lists(st.tuples(*[st.integers(1, 255)] * 3), min_size=num_classes, max_size=num_classes,
                            unique=True))
    shape = draw(st.tuples(st.integers(1, 24), st.integers(1, 24)))
    values = st.one_of(st.integers(0, num_classes - 1), st.just(IGNORE_INDEX))
    return palette, draw(arrays(np.uint8, shape, elements=values))


@FAST
@given(palettes_and_masks())
def test_colour_masks_decode_to_the_indices_they_were_encoded_from(case):
    palette, indices = case
    rgb = encode_colour_mask(indices, palette, ignore_colour=(0, 0, 0))
    assert np.array_equal(decode_colour_mask(rgb, palette, "mask.png", ignore_colours=[(0, 0, 0)]), indices)


@FAST
@given(palettes_and_masks())
def test_index_pngs_read_back_the_indices_written(tmp_path_factory, case):
    palette, indices = case
    path = tmp_path_factory.mktemp("png") / "mask.png"
    save_index_png(path, indices, palette)
    assert np.array_equal(read_index_png(path), indices)


class Identity(torch.nn.Module):
    """A "segmenter" whose logits are its input: stitching must hand back the image exactly."""

    def forward(self, x):
        return x


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 70), width=st.integers(1, 70), window=st.integers(1, 40), data=st.data())
def test_sliding_window_of_an_identity_model_returns_the_image(height, width, window, data):
    stride = data.draw(st.integers(1, window), label="stride")
    batch = data.draw(st.integers(1, 5), label="batch")
    # Values that are exact in float32 sums of a few overlaps: the average must be the value itself.
    image = torch.randint(0, 9, (3, height, width)).float() / 8
    logits = sliding_window_logits(Identity(), image, 3, window, stride, batch_size=batch)
    assert logits.shape == (3, height, width)
    assert torch.equal(logits, image)


@FAST
@given(st.integers(1, 6).flatmap(lambda k: st.tuples(
    st.just(k), arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40)),
                       elements=st.one_of(st.integers(0, k - 1), st.just(IGNORE_INDEX))),
    st.integers(1, 48), st.sampled_from([0.0, 0.01, 0.2]))))
def test_grid_tags_match_a_direct_count_and_the_grid_covers_the_tile(case):
    num_classes, label, crop_px, min_fraction = case
    covered = np.zeros(label.shape, dtype=bool)
    for y, x, h, w in grid_crops(*label.shape, crop_px):
        crop = label[y:y + h, x:x + w]
        covered[y:y + h, x:x + w] = True
        labelled = crop[crop != IGNORE_INDEX]
        expected = tuple(c for c in range(num_classes)
                         if labelled.size and (labelled == c).sum() / labelled.size > min_fraction)
        assert tags_of_crop(crop, num_classes, min_fraction) == expected
    assert covered.all()


@FAST
@given(st.integers(1, 7).flatmap(lambda k: st.tuples(
    st.just(k), st.integers(1, 300).flatmap(lambda n: st.tuples(
        arrays(np.int64, n, elements=st.integers(0, k - 1)),
        arrays(np.int64, n, elements=st.one_of(st.integers(0, k - 1), st.just(IGNORE_INDEX))))))))
def test_confusion_matrix_equals_a_naive_count_for_numpy_and_torch(case):
    num_classes, (pred, target) = case
    naive = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(pred, target):
        if t != IGNORE_INDEX:
            naive[t, p] += 1
    assert np.array_equal(confusion_matrix(pred, target, num_classes), naive)
    assert np.array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), num_classes).numpy(),
                          naive)


@FAST
@given(n_tiles=st.integers(4, 60), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_a_split_is_a_function_of_its_seed_and_parts_never_overlap(n_tiles, seed, data):
    ids = [f"tile_{i}" for i in data.draw(st.permutations(range(n_tiles)), label="listing order")]
    n_labelled = data.draw(st.integers(1, n_tiles - 3), label="n_labelled")
    n_tagged = data.draw(st.integers(0, n_tiles - n_labelled - 2), label="n_tagged")
    n_val = data.draw(st.integers(0, n_tiles - n_labelled - n_tagged - 1), label="n_val")
    split = make_split(ids, n_labelled, n_tagged, n_val, seed=seed)
    again = make_split(sorted(ids), n_labelled, n_tagged, n_val, seed=seed)  # any listing order
    assert split == again
    parts = [split.labelled, split.tagged, split.val, split.test]
    assert [len(p) for p in parts[:3]] == [n_labelled, n_tagged, n_val]
    assert sorted(t for p in parts for t in p) == sorted(ids)
