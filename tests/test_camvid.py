import numpy as np
import pytest
from PIL import Image

from wsseg.datasets.base import DatasetError
from wsseg.datasets.camvid import camvid_source


def test_segnet_layout_void_is_ignored(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / f"{split}annot").mkdir()
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "train" / "0001TP_006690.png")
    Image.fromarray(np.array([[0, 3, 8, 11]] * 3, np.uint8)).save(tmp_path / "trainannot" / "0001TP_006690.png")
    source = camvid_source(tmp_path, "train")
    assert source.classes.num_classes == 11 and source.classes.names[3] == "road"
    assert source.label("0001TP_006690")[0].tolist() == [0, 3, 8, 255]
    with pytest.raises(DatasetError, match="image folder not found"):
        camvid_source(tmp_path, "val")
    with pytest.raises(DatasetError, match="split must be"):
        camvid_source(tmp_path, "trainval")


def test_every_part_present_is_read_with_bare_frame_names(tmp_path):
    for split, name in (("train", "0001TP_006690"), ("val", "0016E5_07959"), ("test", "Seq05VD_f00000")):
        (tmp_path / split).mkdir()
        (tmp_path / f"{split}annot").mkdir()
        Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / split / f"{name}.png")
        Image.fromarray(np.zeros((3, 4), np.uint8)).save(tmp_path / f"{split}annot" / f"{name}.png")
    source = camvid_source(tmp_path)
    assert [(t.tile_id, t.part) for t in source.tiles] == [
        ("0001TP_006690", "train"), ("0016E5_07959", "val"), ("Seq05VD_f00000", "test")]
    assert [t.tile_id for t in camvid_source(tmp_path, "val").tiles] == ["0016E5_07959"]
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "val" / "0001TP_006690.png")
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(tmp_path / "valannot" / "0001TP_006690.png")
    with pytest.raises(DatasetError, match="tile id '0001TP_006690' also used by"):
        camvid_source(tmp_path)
