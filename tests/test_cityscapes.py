import numpy as np
import pytest
from PIL import Image

from wsseg.datasets.base import DatasetError
from wsseg.datasets.cityscapes import CITYSCAPES_CLASSES, LABEL_TO_TRAIN_ID, cityscapes_source


def test_label_id_table():
    assert len(LABEL_TO_TRAIN_ID) == 19 == CITYSCAPES_CLASSES.num_classes
    assert sorted(LABEL_TO_TRAIN_ID.values()) == list(range(19))
    assert LABEL_TO_TRAIN_ID[7] == 0 and LABEL_TO_TRAIN_ID[26] == 13 and LABEL_TO_TRAIN_ID[33] == 18


def test_fake_layout_maps_ids(tmp_path):
    city = "aachen"
    (tmp_path / "leftImg8bit" / "train" / city).mkdir(parents=True)
    (tmp_path / "gtFine" / "train" / city).mkdir(parents=True)
    frame = f"{city}_000000_000019"
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "leftImg8bit" / "train" / city / f"{frame}_leftImg8bit.png")
    ids = np.array([[0, 7, 8, 9, 11, 26], [33, 1, 23, 24, 25, 30]] * 2, np.uint8)
    Image.fromarray(ids).save(tmp_path / "gtFine" / "train" / city / f"{frame}_gtFine_labelIds.png")
    source = cityscapes_source(tmp_path, split="train")
    assert source.label(frame)[:2].tolist() == [[255, 0, 1, 255, 2, 13], [18, 255, 10, 11, 12, 255]]
    with pytest.raises(DatasetError, match="no ground truth"):
        cityscapes_source(tmp_path, split="train", label="labelTrainIds")


def test_real_frame_mapped_ids_match_train_ids(shared_data):
    root = shared_data / "cityscapes"
    mapped = cityscapes_source(root, "val", "labelIds")
    stored = cityscapes_source(root, "val", "labelTrainIds")
    frame = "frankfurt_000000_000294"
    assert [t.tile_id for t in mapped.tiles] == [frame]
    a, b = mapped.label(frame), stored.label(frame)
    assert a.shape == (128, 256) == mapped.image(frame).shape[:2]
    # The sample's two label files were downscaled separately: a few edge pixels differ.
    assert (a == b).mean() > 0.99
    assert set(np.unique(a).tolist()) == set(np.unique(b).tolist())


def _frame(root, part, city, frame, label=True):
    (root / "leftImg8bit" / part / city).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "leftImg8bit" / part / city / f"{frame}_leftImg8bit.png")
    if label:
        (root / "gtFine" / part / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((2, 3), 7, np.uint8)).save(root / "gtFine" / part / city / f"{frame}_gtFine_labelIds.png")


def test_every_part_is_read_and_test_labels_only_on_request(tmp_path):
    _frame(tmp_path, "train", "aachen", "aachen_000000_000019")
    _frame(tmp_path, "val", "lindau", "lindau_000000_000019")
    _frame(tmp_path, "test", "berlin", "berlin_000000_000019", label=False)
    source = cityscapes_source(tmp_path)
    assert [(t.tile_id, t.part) for t in source.tiles] == [
        ("aachen_000000_000019", "train"), ("lindau_000000_000019", "val"), ("berlin_000000_000019", "test")]
    assert source.tile("berlin_000000_000019").label_path is None
    with pytest.raises(DatasetError, match="gtFine/test: folder not found"):
        cityscapes_source(tmp_path, test_labels=True)
    # The released test ground truth is placeholders: it is only read when asked for.
    _frame(tmp_path, "test", "berlin", "berlin_000000_000019")
    assert cityscapes_source(tmp_path).tile("berlin_000000_000019").label_path is None
    labelled = cityscapes_source(tmp_path, test_labels=True)
    assert labelled.label("berlin_000000_000019").tolist() == [[0, 0, 0]] * 2
    assert [t.part for t in cityscapes_source(tmp_path, split="val").tiles] == ["val"]
    with pytest.raises(DatasetError, match="no leftImg8bit/train, val or test folder"):
        cityscapes_source(tmp_path / "gtFine")


def test_real_frame_is_the_val_part(shared_data):
    assert [t.part for t in cityscapes_source(shared_data / "cityscapes").tiles] == ["val"]
