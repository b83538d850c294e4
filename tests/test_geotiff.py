"""The block layout of GeoTIFF prediction: each block's read span holds exactly the whole-image
windows that cover it."""

import random

from wsseg.core.evaluate import window_starts
from wsseg.pipeline.geotiff import block_spans


def test_read_spans_hold_exactly_the_covering_windows():
    rng = random.Random(0)
    for _ in range(5000):
        window = rng.randint(1, 40)
        stride, length, block = rng.randint(1, window), rng.randint(1, 200), rng.randint(1, 120)
        whole = set(window_starts(max(length, window), window, stride))
        spans = block_spans(length, block, window, stride)
        assert [s[0] for s in spans[1:]] == [s[1] for s in spans[:-1]] and (spans[0][0], spans[-1][1]) == (0, length)
        for start, end, read_start, read_end in spans:
            inside = {read_start + x for x in window_starts(max(read_end - read_start, window), window, stride)}
            covering = {x for x in whole if x < end and x + window > start}
            assert covering <= inside <= whole, (length, block, window, stride, start)
            assert read_start <= start and read_end >= end


def test_small_rasters_are_one_block():
    assert block_spans(20, 8, 32, 24) == [(0, 20, 0, 20)]
    assert block_spans(100, 2048, 32, 24) == [(0, 100, 0, 100)]
