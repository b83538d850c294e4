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
