import json

import numpy as np
import pytest

from wsseg.datasets.base import ClassSpec, DatasetError, Tile, TileSource
from wsseg.datasets.tags import CropTag, compute_crop_tags, grid_crops, load_crop_tags, save_crop_tags


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
    _write(path, {"a": [[0, 0, 4, 4, [0, 2]]]})
    with pytest.raises(DatasetError, match=r"class index 2 outside 0..1"):
        load_crop_tags(path)
    _write(path, {"a": [[0, 0, 4, 4, []], [0, 4, 4, 4, []]]})
    with pytest.raises(DatasetError, match="'a' has 2 crops but not a single class tag"):
        load_crop_tags(path)
    _write(path, {"a": [[0, 0, 4, [0]]]})
    with pytest.raises(DatasetError, match="malformed crop"):
        load_crop_tags(path)
