"""The list files datasets ship their parts in, read the way each writes them."""

from pathlib import Path

import pytest

from wsseg.datasets.base import DatasetError
from wsseg.datasets.split_lists import check_split_files, listed_parts, read_list_file

SUFFIXES = {".jpg", ".png"}


def test_lines_keep_their_numbers_and_first_field(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("2007_000032  1\n\n   \n2007_000033 -1\r\nlast")  # VOC's per-class lists add a flag
    assert [(line.line, line.entry, line.where) for line in read_list_file(path)] == [
        (1, "2007_000032", f"{path}:1"), (4, "2007_000033", f"{path}:4"), (5, "last", f"{path}:5")]
    with pytest.raises(DatasetError, match="nope.txt: list file not found"):
        read_list_file(tmp_path / "nope.txt")


def test_a_stem_a_file_name_and_a_root_relative_path_name_the_same_image(tmp_path):
    images = tmp_path / "images"
    by_stem = {"x": images / "x.jpg", "y.v2": images / "y.v2.jpg", "z": images / "z.jpg"}
    (tmp_path / "l.txt").write_text("x\ny.v2.jpg\nimages\\z.jpg\n")
    problems = []
    assert listed_parts(tmp_path, {"train": "l.txt"}, images, by_stem, SUFFIXES, problems) == {
        "x": "train", "y.v2": "train", "z": "train"}
    assert problems == []
    # A stem with a dot that is no image suffix is still a stem; a path must be the image's folder.
    (tmp_path / "l.txt").write_text("y.v2\n./images/x.jpg\nimages/../images/z\nlabels/x.jpg\n")
    assert listed_parts(tmp_path, {"val": "l.txt"}, images, by_stem, SUFFIXES, problems) == {
        "y.v2": "val", "x": "val", "z": "val"}
    assert [(Path(p.where).name, p.tile_id) for p in problems] == [("l.txt:4", "x")]


def test_split_files_must_map_official_parts_to_paths():
    assert check_split_files({"train": Path("a.txt")}) == {"train": "a.txt"}
    for bad, message in (("splits/train.txt", "must map official parts to list files"),
                         ({}, "must map official parts"), ({"trainval": "a.txt"}, "part 'trainval' is not among"),
                         ({"train": ["a.txt"]}, r"split_files.train must be the path of a list file")):
        with pytest.raises(DatasetError, match=message):
            check_split_files(bad)
