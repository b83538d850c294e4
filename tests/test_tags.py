import json

import numpy as np
import pytest

from wsseg.datasets.base import ClassSpec, DatasetError, Tile, TileSource
from wsseg.datasets.tags import (TAG_NEGATIVE, TAG_POSITIVE, TAG_UNKNOWN, CropTag, TagGrid, compute_crop_tags,
                                grid_crops, load_crop_tags, save_crop_tags, tags_title)


def _memory_source(labels: dict, num_classes=4):
    classes = ClassSpec(tuple(f"c{i}" for i in range(num_classes)), tuple((i, i, i) for i in range(num_classes)))
    tiles = [Tile(k, k, k) for k in labels]
    return TileSource("memory", classes, tiles, read_image=lambda p: np.zeros(labels[p].shape + (3,), np.uint8),
                      read_label=lambda p: labels[p])


def test_grid_covers_edges_with_full_size_crops():
    crops = grid_crops(500, 430, 200)
    assert {(y, x) for y, x, _, _ in crops} == {(y, x) for y in (0, 200, 300) for x in (0, 200, 230)}
    assert all((h, w) == (200, 200) for _, _, h, w in crops)
    covered = np.zeros((500, 430), bool)
    for y, x, h, w in crops:
        covered[y:y + h, x:x + w] = True
    assert covered.all()
    assert grid_crops(400, 400, 200) == [(0, 0, 200, 200), (0, 200, 200, 200), (200, 0, 200, 200), (200, 200, 200, 200)]
    assert grid_crops(150, 90, 200) == [(0, 0, 150, 90)]
    assert grid_crops(150, 450, 200) == [(0, 0, 150, 200), (0, 200, 150, 200), (0, 250, 150, 200)]


def test_compute_tags_ignores_ignore_pixels_and_applies_min_fraction():
    label = np.zeros((4, 8), np.uint8)
    label[:, 4:] = 1
    label[0, 4] = 2  # 1 of 16 pixels of the right crop
    label[:, :2] = 255  # ignored: the left crop has 8 labelled pixels
    label[1, 2] = 3  # 1 of those 8 = 0.125
    source = _memory_source({"t": label})
    tags = compute_crop_tags(source, ["t"], crop_px=4)
    assert tags == [CropTag("t", 0, 0, 4, 4, (0, 3)), CropTag("t", 0, 4, 4, 4, (1, 2))]
    tags = compute_crop_tags(source, ["t"], crop_px=4, min_fraction=0.1)
    assert [t.classes for t in tags] == [(0, 3), (1,)]  # 1/16 = 0.0625 ≤ 0.1 drops class 2
    all_ignore = _memory_source({"u": np.full((4, 4), 255, np.uint8)})
    assert compute_crop_tags(all_ignore, ["u"], 4)[0].classes == ()


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    labels = {"a1": rng.integers(0, 4, (10, 13)).astype(np.uint8), "a2": rng.integers(0, 4, (7, 5)).astype(np.uint8)}
    source = _memory_source(labels)
    tags = compute_crop_tags(source, ["a1", "a2"], crop_px=4)
    path = tmp_path / "crop_tags.json"
    save_crop_tags(path, tags, 4, source.classes.names)
    data = json.loads(path.read_text())
    assert data["crop_px"] == 4 and data["class_names"] == ["c0", "c1", "c2", "c3"]
    assert load_crop_tags(path, expected_tile_ids=["a1", "a2"], num_classes=4) == tags


def test_image_tags_are_one_whole_image_crop_per_tile_with_the_full_masks_classes():
    label = np.zeros((6, 10), np.uint8)
    label[:, 5:] = 1
    label[0, 0] = 2  # 1 of 54 labelled pixels
    label[5, :6] = 255  # not counted
    wide = np.full((3, 40), 3, np.uint8)
    source = _memory_source({"t": label, "wide": wide})
    tags = compute_crop_tags(source, ["t", "wide"], crop_px=None)
    assert tags == [CropTag("t", 0, 0, 6, 10, (0, 1, 2)), CropTag("wide", 0, 0, 3, 40, (3,))]
    # The same classes as a grid crop as large as the tile; a rare class drops out as for grid crops.
    assert [t.classes for t in compute_crop_tags(source, ["t"], crop_px=10)] == [(0, 1, 2)]
    assert [t.classes for t in compute_crop_tags(source, ["t"], crop_px=None, min_fraction=0.02)] == [(0, 1)]


def test_crop_tags_file_records_the_mode(tmp_path):
    labels = {"a1": np.array([[0, 1], [1, 1]], np.uint8), "a2": np.full((3, 5), 2, np.uint8)}
    source = _memory_source(labels)
    path = tmp_path / "crop_tags.json"
    image_tags = compute_crop_tags(source, ["a1", "a2"], crop_px=None)
    save_crop_tags(path, image_tags, None, source.classes.names)
    data = json.loads(path.read_text())
    assert data["mode"] == "image" and "crop_px" not in data
    assert load_crop_tags(path, ["a1", "a2"], 4, expected_mode="image") == image_tags
    with pytest.raises(DatasetError, match="made with weak.tags: image, but this run has weak.tags: grid"):
        load_crop_tags(path, ["a1", "a2"], 4, expected_mode="grid")
    grid_tags = compute_crop_tags(source, ["a1", "a2"], crop_px=2)
    save_crop_tags(path, grid_tags, 2, source.classes.names)
    assert json.loads(path.read_text())["mode"] == "grid"
    with pytest.raises(DatasetError, match="made with weak.tags: grid, but this run has weak.tags: image"):
        load_crop_tags(path, expected_mode="image")
    # A file from before the mode was recorded holds grid tags.
    data = json.loads(path.read_text())
    del data["mode"]
    path.write_text(json.dumps(data))
    assert load_crop_tags(path, ["a1", "a2"], 4, expected_mode="grid") == grid_tags
    with pytest.raises(DatasetError, match="weak.tags: grid, but this run has weak.tags: image"):
        load_crop_tags(path, expected_mode="image")
    # Image tags are one crop at (0, 0) per tile.
    path.write_text(json.dumps({"mode": "image", "class_names": ["c0", "c1"],
                                "tiles": {"a": [[0, 0, 2, 2, [0]], [0, 2, 2, 2, [1]]]}}))
    with pytest.raises(DatasetError, match=r"image tags, but tile .a. has 2 crop\(s\)"):
        load_crop_tags(path)
    path.write_text(json.dumps({"mode": "grid", "class_names": ["c0"], "tiles": {"a": [[0, 0, 2, 2, [0]]]}}))
    with pytest.raises(DatasetError, match="missing key 'crop_px'"):
        load_crop_tags(path)
    path.write_text(json.dumps({"mode": "tile", "class_names": ["c0"], "tiles": {}}))
    with pytest.raises(DatasetError, match="unknown tag mode 'tile'"):
        load_crop_tags(path)


def _write(path, tiles, class_names=("c0", "c1")):
    path.write_text(json.dumps({"crop_px": 4, "class_names": list(class_names), "tiles": tiles}))


def test_load_errors(tmp_path):
    path = tmp_path / "t.json"
    _write(path, {"a": [[0, 0, 4, 4, [0]]], "b": [[0, 0, 4, 4, [1]]]})
    with pytest.raises(DatasetError, match=r"tiles \['b'\] that are not in the split"):
        load_crop_tags(path, expected_tile_ids=["a"])
    with pytest.raises(DatasetError, match=r"no tags for tiles \['c'\]"):
        load_crop_tags(path, expected_tile_ids=["a", "b", "c"])
    with pytest.raises(DatasetError, match="made for 2 classes"):
        load_crop_tags(path, num_classes=3)
    # Indices mean classes by position: other names, or the same in another order, are refused.
    assert len(load_crop_tags(path, class_names=["c0", "c1"])) == 2
    with pytest.raises(DatasetError, match=r"name classes \['c1x'\] that the dataset does not have"):
        _write(path, {"a": [[0, 0, 4, 4, [0]]]}, class_names=("c0", "c1x"))
        load_crop_tags(path, class_names=["c0", "c1"])
    with pytest.raises(DatasetError, match="the classes in another order"):
        _write(path, {"a": [[0, 0, 4, 4, [0]]]}, class_names=("c1", "c0"))
        load_crop_tags(path, class_names=["c0", "c1"])
    _write(path, {"a": [[0, 0, 4, 4, [0, 2]]]})
    with pytest.raises(DatasetError, match=r"class index 2 outside 0..1"):
        load_crop_tags(path)
    _write(path, {"a": [[0, 0, 4, 4, []], [0, 4, 4, 4, []]]})
    with pytest.raises(DatasetError, match="'a' has 2 crops but not a single class tag"):
        load_crop_tags(path)
    _write(path, {"a": [[0, 0, 4, [0]]]})
    with pytest.raises(DatasetError, match="malformed crop"):
        load_crop_tags(path)


def _direct_targets(label, tags, y, x, h, w, num_classes):
    """Window targets by pixel masks: cells inside the window and cells touching it, counted."""
    height, width = label.shape
    window = np.zeros((height, width), bool)
    window[max(y, 0):y + h, max(x, 0):x + w] = True
    targets = np.full(num_classes, TAG_UNKNOWN)
    seen_nearby, seen_inside = np.zeros(num_classes, bool), np.zeros(num_classes, bool)
    for tag in tags:
        cell = np.zeros((height, width), bool)
        cell[tag.y:tag.y + tag.h, tag.x:tag.x + tag.w] = True
        present = np.bincount(label[cell], minlength=256)[:num_classes] > 0
        if (cell & window).any():
            seen_nearby |= present
        if not (cell & ~window).any():
            seen_inside |= present
    targets[~seen_nearby] = TAG_NEGATIVE
    targets[seen_inside] = TAG_POSITIVE
    return targets


def test_window_targets_match_a_direct_count_and_the_pixels():
    rng = np.random.default_rng(0)
    label = np.zeros((50, 70), np.uint8)  # grid of 20 px: rows at 0, 20, 30; columns at 0, 20, 40, 50
    for _ in range(12):  # rectangles of classes 1..4; class 5 never appears
        top, left = rng.integers(0, 45), rng.integers(0, 65)
        label[top:top + rng.integers(2, 12), left:left + rng.integers(2, 12)] = rng.integers(1, 5)
    label[:3, :3] = 255
    tags = compute_crop_tags(_memory_source({"t": label}, num_classes=6), ["t"], crop_px=20)
    grid = TagGrid(tags, 6)
    windows = [(int(rng.integers(0, 30)), int(rng.integers(0, 50)), 20 + int(rng.integers(0, 25)),
                20 + int(rng.integers(0, 25))) for _ in range(60)]
    windows += [(0, 0, 50, 70), (30, 50, 20, 20), (0, 0, 19, 19), (25, 45, 40, 40), (10, 10, 5, 5)]
    outcomes = set()
    for y, x, h, w in windows:
        targets = grid.window_targets("t", y, x, h, w)
        assert targets.dtype == np.int8
        np.testing.assert_array_equal(targets, _direct_targets(label, tags, y, x, h, w, 6), err_msg=str((y, x, h, w)))
        inside = np.bincount(label[y:y + h, x:x + w].ravel(), minlength=256)[:6] > 0
        assert inside[targets == TAG_POSITIVE].all()  # a positive is in the window
        assert not inside[targets == TAG_NEGATIVE].any()  # a negative is not
        outcomes |= set(targets.tolist())
        assert targets[5] == TAG_NEGATIVE
    assert outcomes == {TAG_POSITIVE, TAG_NEGATIVE, TAG_UNKNOWN}
    # The whole tile holds every cell: each class is known. A window smaller than a cell knows no positive.
    whole = grid.window_targets("t", 0, 0, 50, 70)
    assert set(whole.tolist()) <= {TAG_POSITIVE, TAG_NEGATIVE}
    assert TAG_POSITIVE not in grid.window_targets("t", 10, 10, 5, 5).tolist()


def test_window_targets_of_a_padded_crop_of_a_small_tile():
    label = np.zeros((12, 20), np.uint8)
    label[:, 15:] = 2
    tags = compute_crop_tags(_memory_source({"s": label}), ["s"], crop_px=32)
    assert tags == [CropTag("s", 0, 0, 12, 20, (0, 2))]
    grid = TagGrid(tags, 4)
    # A 32 px crop of a 12×20 tile starts at (0, 0) and holds the one cell.
    assert grid.window_targets("s", 0, 0, 32, 32).tolist() == [TAG_POSITIVE, TAG_NEGATIVE, TAG_POSITIVE, TAG_NEGATIVE]
    assert grid.window_targets("s", 0, 0, 10, 10).tolist() == [TAG_UNKNOWN, TAG_NEGATIVE, TAG_UNKNOWN, TAG_NEGATIVE]
    with pytest.raises(DatasetError, match="no grid crop tags for tile 'other'"):
        grid.window_targets("other", 0, 0, 4, 4)


def test_window_targets_of_image_tags():
    label = np.zeros((30, 40), np.uint8)
    label[:10, :10] = 1
    label[20:, 30:] = 3  # class 2 nowhere
    tags = compute_crop_tags(_memory_source({"t": label}), ["t"], crop_px=None)
    grid = TagGrid(tags, 4)
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = int(rng.integers(4, 30)), int(rng.integers(4, 40))
        y, x = int(rng.integers(0, 31 - h)), int(rng.integers(0, 41 - w))
        targets = grid.window_targets("t", y, x, h, w)
        # A crop inside the image is certain of no class the image holds, and of every class it lacks.
        assert targets.tolist() == [TAG_UNKNOWN, TAG_UNKNOWN, TAG_NEGATIVE, TAG_UNKNOWN], (y, x, h, w)
        np.testing.assert_array_equal(targets, _direct_targets(label, tags, y, x, h, w, 4))
    # A window holding the whole image (a padded crop) knows every class.
    assert grid.window_targets("t", 0, 0, 32, 48).tolist() == [TAG_POSITIVE, TAG_POSITIVE, TAG_NEGATIVE, TAG_POSITIVE]
    assert grid.window_targets("t", 0, 0, 30, 40).tolist() == [TAG_POSITIVE, TAG_POSITIVE, TAG_NEGATIVE, TAG_POSITIVE]


def test_titles_name_the_tags_of_the_mode():
    assert tags_title("grid") == "crop tags" and tags_title("image") == "image tags"
    with pytest.raises(DatasetError, match="weak.tags must be one of grid, image, got 'box'"):
        tags_title("box")
