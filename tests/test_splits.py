import json

import pytest

from wsseg.datasets.base import DatasetError
from wsseg.datasets.isprs import ALL_AREAS, OFFICIAL_TEST_AREAS, OFFICIAL_TRAIN_AREAS
from wsseg.datasets.splits import (abbreviated, format_split, load_split, make_split, official_vaihingen_split,
                                   save_split, sort_tile_ids)

VAIHINGEN = [f"area{n}" for n in ALL_AREAS]


def test_natural_sort():
    assert sort_tile_ids(["area10", "area2", "area1", "b1", "a10"]) == ["a10", "area1", "area2", "area10", "b1"]


def test_seed_task_split_counts_disjoint_and_complete():
    split = make_split(VAIHINGEN, n_labelled=3, n_tagged=21, n_val=2, seed=0)
    assert (len(split.labelled), len(split.tagged), len(split.val), len(split.test)) == (3, 21, 2, 7)
    assert sorted(split.all_tiles()) == sorted(VAIHINGEN)
    assert len(set(split.all_tiles())) == 33
    assert not set(split.val) & set(split.test)
    assert split.labelled == sort_tile_ids(split.labelled)


def test_split_depends_on_seed_not_on_input_order():
    a = make_split(VAIHINGEN, seed=3)
    b = make_split(list(reversed(VAIHINGEN)), seed=3)
    assert a == b
    assert make_split(VAIHINGEN, seed=4).labelled != a.labelled or make_split(VAIHINGEN, seed=4).test != a.test


def test_split_count_errors():
    with pytest.raises(DatasetError, match="only 33"):
        make_split(VAIHINGEN, n_labelled=10, n_tagged=20, n_val=5)
    with pytest.raises(DatasetError, match="non-negative"):
        make_split(VAIHINGEN, n_labelled=-1)
    with pytest.raises(DatasetError, match="duplicate"):
        make_split(["a", "a", "b"], 1, 0, 0)


def test_official_split():
    split = official_vaihingen_split(VAIHINGEN, n_labelled=3, n_val=2, seed=1)
    assert split.test == [f"area{n}" for n in OFFICIAL_TEST_AREAS]
    train = set(split.labelled) | set(split.tagged) | set(split.val)
    assert train == {f"area{n}" for n in OFFICIAL_TRAIN_AREAS}
    assert (len(split.labelled), len(split.val), len(split.tagged)) == (3, 2, 11)
    assert split.kind == "official"
    with pytest.raises(DatasetError, match="not an ISPRS Vaihingen tile"):
        official_vaihingen_split(VAIHINGEN + ["tile1_part001"])
    with pytest.raises(DatasetError, match="only 16 official train tiles"):
        official_vaihingen_split(VAIHINGEN, n_labelled=15, n_val=2)


def test_save_load_round_trip_and_format(tmp_path):
    split = make_split(VAIHINGEN, seed=7)
    path = tmp_path / "run" / "split.json"
    save_split(path, split)
    assert load_split(path) == split
    text = format_split(split)
    assert "seed 7" in text and all(t in text for t in split.labelled)  # 3 ids: all shown
    assert text.count("\n") == 4


def test_a_split_of_700_tiles_formats_to_counts_and_a_few_ids():
    # Each part is logged as its size and its first ids; every id of 700 on one line is unreadable.
    split = make_split([f"tile_{i:04d}" for i in range(700)], n_labelled=30, n_tagged=500, n_val=20, seed=1)
    text = format_split(split)
    assert "30 labelled, 500 tagged, 20 val, 150 test" in text
    assert "tagged   (500): " in text and "… (495 more)" in text
    assert text.count("tile_") == 4 * 5
    assert len(text) < 700, len(text)


def test_abbreviated_shows_short_lists_whole():
    assert abbreviated(["a", "b"]) == "a, b"
    assert abbreviated(range(8), limit=3) == "0, 1, 2, … (5 more)"
    assert abbreviated([]) == ""


def test_load_split_errors(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"labelled": ["a"], "tagged": ["b"], "val": ["a"], "test": [], "seed": 0}))
    with pytest.raises(DatasetError, match=r"'a' is in both 'labelled' and 'val'"):
        load_split(path)
    path.write_text(json.dumps({"labelled": ["a"], "tagged": [], "val": [], "seed": 0}))
    with pytest.raises(DatasetError, match="missing key 'test'"):
        load_split(path)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_split(path)
