import numpy as np
import pytest
from PIL import Image

from wsseg.datasets.base import DataProblemsError, DatasetError
from wsseg.datasets.colour import save_index_png
from wsseg.datasets.voc import VOC_CLASSES, voc_source


def _fake_voc(root):
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    for name, value in (("2007_000032", 1), ("2007_000033", 15)):
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        label = np.zeros((10, 12), np.uint8)
        label[2:5, 3:7] = value
        label[2, 2] = 255
        save_index_png(voc / "SegmentationClass" / f"{name}.png", label, VOC_CLASSES.palette)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    return voc


def test_fake_vocdevkit(tmp_path):
    voc = _fake_voc(tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit", voc):
        assert [t.tile_id for t in voc_source(root).tiles] == ["2007_000032", "2007_000033"]
    source = voc_source(tmp_path, split="val")
    assert [t.tile_id for t in source.tiles] == ["2007_000033"]
    label = source.label("2007_000033")
    assert label[3, 4] == 15 and label[2, 2] == 255 and label[0, 0] == 0
    with pytest.raises(DatasetError, match="train.txt: split list not found"):
        voc_source(tmp_path, split="train")
    save_index_png(voc / "SegmentationClass" / "2007_000032.png", np.full((10, 12), 21, np.uint8), VOC_CLASSES.palette)
    with pytest.raises(DatasetError, match="class index 21"):
        voc_source(tmp_path).label("2007_000032")


def test_real_voc_sample(shared_data):
    source = voc_source(shared_data / "voc")
    assert [t.tile_id for t in source.tiles] == ["2011_000003", "2011_000006", "2011_000025"]
    with Image.open(source.tiles[0].label_path) as image:
        assert image.mode == "P"
        stored_palette = np.array(image.getpalette()[:63]).reshape(21, 3)
    np.testing.assert_array_equal(stored_palette, np.array(VOC_CLASSES.palette))
    label = source.label("2011_000003")
    assert label.shape == (338, 500)
    assert set(np.unique(label).tolist()) == {0, 5, 15, 255}  # background, bottle, person, void
    assert source.image("2011_000003").shape == (338, 500, 3)
    names = (shared_data / "voc" / "VOCdevkit" / "VOC2012" / "class_names.txt").read_text().split("\n")
    assert len([n for n in names if n.strip()]) == VOC_CLASSES.num_classes


def test_parts_come_from_the_official_lists(tmp_path):
    voc = _fake_voc(tmp_path)
    assert [t.part for t in voc_source(tmp_path).tiles] == ["train", "val"]  # not in val.txt: train
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    assert [t.part for t in voc_source(tmp_path).tiles] == [None, None]
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n")
    assert [t.part for t in voc_source(tmp_path).tiles] == ["train", None]


def test_a_listed_id_without_its_files_names_the_list_and_line(tmp_path):
    voc = _fake_voc(tmp_path)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n\n2007_000099\n")
    with pytest.raises(DataProblemsError) as caught:
        voc_source(tmp_path, split="train")
    [problem] = caught.value.problems
    assert problem.where == f"{voc}/ImageSets/Segmentation/train.txt:3" and problem.tile_id == "2007_000099"
    assert "lists '2007_000099', but there is no" in problem.problem and "line 3 of train.txt" in problem.fix
    assert [t.tile_id for t in caught.value.usable.tiles] == ["2007_000032"]
