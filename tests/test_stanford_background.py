"""Stanford Background (Gould et al., ICCV 2009) in the layout MMSegmentation's tutorial writes:
the real 715 scenes of $WSSEG_SHARED/data, and the errors a user meets on the way."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsseg.cli import main
from wsseg.datasets import build_source, fixed_classes
from wsseg.datasets.base import DataProblemsError, DatasetError
from wsseg.datasets.splits import group_by_part, official_split
from wsseg.datasets.stanford_background import STANFORD_BACKGROUND_CLASSES, stanford_background_source

REPO = Path(__file__).resolve().parents[1]
# A scene whose PNG stores 3429 unknown pixels as 15 (0.5% of all pixels are unknown, in 388 scenes).
WITH_UNKNOWN = "0000794"


@pytest.fixture(scope="module")
def iccv09(shared_data):
    return shared_data / "stanford_background" / "iccv09Data"


def test_real_scenes_parts_and_classes(iccv09):
    source = build_source("stanford_background", iccv09.parent)  # the folder holding iccv09Data will do
    parts = group_by_part(source.tiles)
    assert {part: len(ids) for part, ids in parts.items()} == {"train": 572, "val": 143}
    assert len({t.tile_id for t in source.tiles}) == 715 and source.tiles[0].tile_id == "0000047"
    assert source.classes.names == ("sky", "tree", "road", "grass", "water", "building", "mountain",
                                    "foreground_object")
    assert fixed_classes("stanford_background") == source.classes
    # Drawn in the PNGs' own colours, none of them the black that figures give ignore.
    with Image.open(source.tile("0000047").label_path) as png:
        stored = np.array(png.getpalette()[:24]).reshape(8, 3)
    np.testing.assert_array_equal(stored, np.array(STANFORD_BACKGROUND_CLASSES.palette))
    assert (0, 0, 0) not in source.classes.palette
    assert [t.tile_id for t in stanford_background_source(iccv09, split="val").tiles] == parts["val"]


def test_unknown_stored_as_15_is_ignore(iccv09):
    source = stanford_background_source(iccv09)
    with Image.open(source.tile(WITH_UNKNOWN).label_path) as png:
        stored = np.array(png)
    label = source.label(WITH_UNKNOWN)
    assert label.shape == source.image(WITH_UNKNOWN).shape[:2] == (241, 320)
    assert (stored == 15).sum() == (label == 255).sum() == 3429
    assert set(np.unique(label)) <= set(range(8)) | {255}
    np.testing.assert_array_equal(label[stored != 15], stored[stored != 15])


def test_official_split_tests_on_val_and_validates_on_train(iccv09):
    source = stanford_background_source(iccv09)
    parts = {t.tile_id: t.part for t in source.tiles}
    split = official_split(group_by_part(source.tiles), n_labelled=20, n_tagged=300, n_val=20, seed=0,
                           dataset=source.name)
    # No test part: validation comes from train, and the val part is scored as the test set.
    assert (len(split.labelled), len(split.tagged), len(split.val), len(split.test)) == (20, 300, 20, 143)
    assert {parts[t] for t in split.labelled + split.tagged + split.val} == {"train"}
    assert {parts[t] for t in split.test} == {"val"}
    assert split.info["val_from"] == "train" and split.info["test_from"] == "val"


def test_the_same_as_a_folder_dataset_with_its_lists(iccv09):
    """What a user of `data.kind: folder` writes for it (README), read the same."""
    folder = build_source("folder", iccv09, image_dir="images", mask_dir="labels",
                          class_names=list(STANFORD_BACKGROUND_CLASSES.names), ignore_index=15,
                          split_files={"train": "splits/train.txt", "val": "splits/val.txt"})
    source = stanford_background_source(iccv09)
    assert [(t.tile_id, t.part) for t in folder.tiles] == [(t.tile_id, t.part) for t in source.tiles]
    np.testing.assert_array_equal(folder.label(WITH_UNKNOWN), source.label(WITH_UNKNOWN))
    # Without ignore_index, the error names the option that fixes it.
    plain = build_source("folder", iccv09, image_dir="images", mask_dir="labels",
                         class_names=list(STANFORD_BACKGROUND_CLASSES.names))
    with pytest.raises(DatasetError, match=r"class index 15 at pixel .* set data.options.ignore_index: 15"):
        plain.label(WITH_UNKNOWN)
    with pytest.raises(DatasetError, match=r"data.options.parts \['splits'\] reads one folder pair per part"):
        build_source("folder", iccv09, image_dir="images", mask_dir="labels",
                     class_names=list(STANFORD_BACKGROUND_CLASSES.names), parts="splits")


def test_a_stale_split_list_names_its_file_and_line(iccv09, tmp_path):
    for folder in ("images", "labels"):
        (tmp_path / folder).symlink_to(iccv09 / folder)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("0000047\n9999999\n")
    (tmp_path / "splits" / "val.txt").write_text((iccv09 / "splits" / "val.txt").read_text())
    with pytest.raises(DataProblemsError) as caught:
        stanford_background_source(tmp_path)
    [problem] = caught.value.problems
    assert problem.where == f"{tmp_path}/splits/train.txt:2" and problem.tile_id == "9999999"
    assert "lists '9999999', but" in problem.problem and "delete line 2 of train.txt" in problem.fix
    assert len(caught.value.usable.tiles) == 1 + 143


def test_the_original_regions_txt_labels_are_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "images" / "0000047.jpg")
    (tmp_path / "labels" / "0000047.regions.txt").write_text("0 0 0 0 -1\n" * 4)
    with pytest.raises(DatasetError, match=r"labels: holds the original <id>.regions.txt labels but no <id>.png"):
        stanford_background_source(tmp_path)
    with pytest.raises(DatasetError, match=r"split must be train or val, got 'test'"):
        stanford_background_source(tmp_path, split="test")


def test_shipped_config_passes_check_data(iccv09, capsys):
    code = main(["check-data", "--config", str(REPO / "configs" / "stanford_background.yaml"),
                 "--set", f"data.root={iccv09}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[-1] == "checked 715 tiles of 'stanford_background': no problems"
