
import numpy as np
import pytest
from PIL import Image

from wsseg.datasets.ade20k import (ADE20K_150_NAMES, ade20k_challenge_source, ade20k_full_source, ade_object_names,
                                   decode_ade_full)
from wsseg.datasets.base import DatasetError


def test_challenge_layout_reduces_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "images" / "validation" / "ADE_val_00000001.jpg")
    Image.fromarray(np.array([[0, 1, 150], [13, 21, 3]], np.uint8)).save(
        root / "annotations" / "validation" / "ADE_val_00000001.png")
    source = ade20k_challenge_source(tmp_path)
    assert len(ADE20K_150_NAMES) == 150 == source.classes.num_classes
    assert source.label("ADE_val_00000001").tolist() == [[255, 0, 149], [12, 20, 2]]
    assert ADE20K_150_NAMES[12] == "person" and ADE20K_150_NAMES[20] == "car"
    Image.fromarray(np.array([[151, 1, 1], [1, 1, 1]], np.uint8)).save(
        root / "annotations" / "validation" / "ADE_val_00000001.png")
    with pytest.raises(DatasetError, match="value 151"):
        source.label("ADE_val_00000001")


def test_full_format_decoding():
    seg = np.array([[[0, 0, 0], [40, 145, 7], [10, 1, 0]]], np.uint8)
    assert decode_ade_full(seg).tolist() == [[0, 4 * 256 + 145, 257]]


def test_real_full_format_images(shared_data):
    root = shared_data / "ade20k"
    source = ade20k_full_source(root, classes={"car": [401], "person": [1831]})
    assert [t.tile_id for t in source.tiles] == ["ADE_train_00016869", "ADE_train_00016900", "ADE_train_00016964"]
    people = 0
    for tile in source.tiles:
        names = ade_object_names(tile.image_path.with_suffix(".json"))
        assert "car" in names[401] and "person" in names.get(1831, "person")
        people += 1831 in names
        full = decode_ade_full(np.asarray(Image.open(tile.label_path).convert("RGB")))
        # Every labelled full index of the mask is a whole object of the JSON, and vice versa.
        assert set(np.unique(full).tolist()) - {0} == set(names)
        label = source.label(tile.tile_id)
        np.testing.assert_array_equal(label == 0, full == 401)
        np.testing.assert_array_equal(label == 1, full == 1831)
        assert ((label == 255) == ~np.isin(full, [401, 1831])).all()
    assert people >= 1
    with pytest.raises(DatasetError, match="needs classes"):
        ade20k_full_source(root)
    with pytest.raises(DatasetError, match="given to both"):
        ade20k_full_source(root, classes={"a": [1], "b": [1]})


def _challenge_part(root, folder, prefix, count):
    (root / "images" / folder).mkdir(parents=True)
    (root / "annotations" / folder).mkdir(parents=True)
    for n in range(1, count + 1):
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "images" / folder / f"{prefix}{n:08d}.jpg")
        Image.fromarray(np.ones((2, 3), np.uint8)).save(root / "annotations" / folder / f"{prefix}{n:08d}.png")


def test_challenge_layout_reads_every_part_with_its_name(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _challenge_part(root, "training", "ADE_train_", 2)
    _challenge_part(root, "validation", "ADE_val_", 1)
    source = ade20k_challenge_source(tmp_path)
    assert [(t.tile_id, t.part) for t in source.tiles] == [
        ("ADE_train_00000001", "train"), ("ADE_train_00000002", "train"), ("ADE_val_00000001", "val")]
    for split in ("training", "train"):
        assert {t.part for t in ade20k_challenge_source(tmp_path, split=split).tiles} == {"train"}
    assert [t.tile_id for t in ade20k_challenge_source(tmp_path, split="val").tiles] == ["ADE_val_00000001"]
    with pytest.raises(DatasetError, match="testing: folder not found"):
        ade20k_challenge_source(tmp_path, split="testing")
    with pytest.raises(DatasetError, match="no images/training or images/validation"):
        ade20k_challenge_source(tmp_path / "ADEChallengeData2016" / "images")


def test_real_challenge_images_are_the_val_part(shared_data):
    source = ade20k_challenge_source(shared_data / "ade20k_challenge")
    assert [(t.tile_id, t.part) for t in source.tiles] == [(f"ADE_val_0000000{n}", "val") for n in (1, 2, 3)]
