"""`datasets.check`: problem records carry their tile, band counts are judged against the majority,
a split may name only labelled tiles of the dataset. (The command line's view: test_bad_inputs.py.)"""

from pathlib import Path

import numpy as np
from PIL import Image

from wsseg.datasets.base import ClassSpec, Tile, TileSource
from wsseg.datasets.check import check_split, check_tiles
from wsseg.datasets.image_files import read_rgb
from wsseg.datasets.splits import Split

CLASSES = ClassSpec(("a", "b"), ((0, 0, 0), (255, 255, 255)))


def source_of(tmp_path: Path, grey: set[int], count: int = 5, unlabelled: set[int] = frozenset()) -> TileSource:
    """`count` 8×8 tiles, grey where their index is in `grey`, RGB elsewhere; masks all class 0."""
    tiles = []
    for i in range(count):
        path = tmp_path / f"i{i}.png"
        Image.fromarray(np.full((8, 8) if i in grey else (8, 8, 3), 100, np.uint8)).save(path)
        tiles.append(Tile(f"i{i}", path, None if i in unlabelled else path))
    return TileSource("mem", CLASSES, tiles, read_image=read_rgb, read_label=lambda p: np.zeros((8, 8), np.uint8))


def test_band_counts_are_judged_against_the_majority(tmp_path):
    problems = check_tiles(source_of(tmp_path, grey={1, 3}), [f"i{i}" for i in range(5)])
    assert [(p.tile_id, p.blocking) for p in problems] == [("i1", True), ("i3", True)]
    assert "has 1 band(s) (grey), but 3 of the 5 images have 3 (colour)" in problems[0].problem
    # A dataset of grey images only is consistent: read as RGB with the grey repeated.
    grey_only = tmp_path / "grey"
    grey_only.mkdir()
    assert check_tiles(source_of(grey_only, grey=set(range(5))), [f"i{i}" for i in range(5)]) == []


def test_a_tile_the_source_lacks_is_a_problem_of_that_tile(tmp_path):
    problems = check_tiles(source_of(tmp_path, grey=set()), ["i0", "ghost"])
    assert [(p.tile_id, p.where) for p in problems] == [("ghost", "split")]


def test_a_split_names_only_labelled_tiles_of_the_dataset(tmp_path):
    source = source_of(tmp_path, grey=set(), unlabelled={4})
    split = Split(labelled=["i0"], tagged=["i1", "gone"], val=["i2"], test=["i3", "i4"], seed=0)
    problems = check_split(split, source, "split.json")
    assert [(p.tile_id, p.problem) for p in problems] == [
        ("gone", "tagged tile 'gone' is not in the dataset 'mem'"), ("i4", "test tile 'i4' has no ground truth")]
    assert check_split(Split(["i0"], ["i1"], ["i2"], ["i3"], seed=0), source, "split.json") == []
