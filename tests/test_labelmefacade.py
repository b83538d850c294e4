"""LabelMeFacade (Fröhlich, Rodner, Denzler, ICPR 2010) as its repository ships it: the real 945
photos of $WSSEG_SHARED/data, their RGBA colour masks, and its train.txt / test.txt."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsseg.cli import main
from wsseg.datasets import build_source, fixed_classes
from wsseg.datasets.base import DataProblemsError, DatasetError
from wsseg.datasets.labelmefacade import labelmefacade_source
from wsseg.datasets.splits import group_by_part, official_split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def facade(shared_data):
    return shared_data / "labelmefacade"


def test_real_photos_parts_and_classes(facade):
    source = build_source("labelmefacade", facade)
    parts = group_by_part(source.tiles)
    assert {part: len(ids) for part, ids in parts.items()} == {"train": 100, "test": 845}
    # images/ also holds filelist.txt and filelist.txt~: neither is a photo.
    assert (facade / "images" / "filelist.txt").is_file() and (facade / "images" / "filelist.txt~").is_file()
    assert all(t.image_path.suffix == ".jpg" for t in source.tiles) and len({t.tile_id for t in source.tiles}) == 945
    assert "images/static_boston_street_april__p1010213.jpg" in (facade / "train.txt").read_text()
    assert source.tile("static_boston_street_april__p1010213").part == "train"
    assert source.classes.names == ("various", "building", "car", "door", "pavement", "road", "sky", "vegetation",
                                    "window")
    assert source.classes.in_mean == source.classes.names  # various is a class, scored like the others
    # Its masks code various black, and it decodes so (below); figures draw it white, since they
    # draw unlabelled pixels black.
    assert (0, 0, 0) not in source.classes.palette and source.classes.palette[1] == (128, 0, 0)
    assert fixed_classes("labelmefacade") == source.classes
    assert [t.tile_id for t in labelmefacade_source(facade, split="train").tiles] == parts["train"]
    with pytest.raises(DatasetError, match=r"split must be train or test, got 'val'"):
        labelmefacade_source(facade, split="val")


def test_rgba_masks_decode_every_pixel_to_a_class(facade):
    source = labelmefacade_source(facade)
    counts = np.zeros(256, np.int64)
    for tile_id in ("static_boston_street_april__p1010213", *[t.tile_id for t in source.tiles[:3]]):
        with Image.open(source.tile(tile_id).label_path) as png:
            assert png.mode == "RGBA"
        label = source.label(tile_id)
        assert label.dtype == np.uint8 and label.shape == source.image(tile_id).shape[:2]
        counts += np.bincount(label.ravel(), minlength=256)
        assert len(np.unique(label)) >= 4  # every photo has 4 to 9 of the classes
    assert counts[9:].sum() == 0  # no ignore: black is various, a class
    assert counts[0] > 0


def test_official_split_tests_on_test_and_validates_on_train(facade):
    source = labelmefacade_source(facade)
    parts = {t.tile_id: t.part for t in source.tiles}
    split = official_split(group_by_part(source.tiles), n_labelled=15, n_tagged=75, n_val=10, n_test=150, seed=0,
                           dataset=source.name)
    # No val part: validation comes from the 100 train photos, the test photos are only scored.
    assert (len(split.labelled), len(split.tagged), len(split.val), len(split.test)) == (15, 75, 10, 150)
    assert {parts[t] for t in split.labelled + split.tagged + split.val} == {"train"}
    assert {parts[t] for t in split.test} == {"test"}


def test_the_same_as_a_folder_dataset_with_its_lists(facade):
    from wsseg.datasets.labelmefacade import LABELMEFACADE_COLOURS, LABELMEFACADE_CLASSES

    folder = build_source("folder", facade, image_dir="images", mask_dir="labels", mask_format="colour",
                          class_names=list(LABELMEFACADE_CLASSES.names), palette=LABELMEFACADE_COLOURS,
                          split_files={"train": "train.txt", "test": "test.txt"})
    source = labelmefacade_source(facade)
    assert [(t.tile_id, t.part) for t in folder.tiles] == [(t.tile_id, t.part) for t in source.tiles]
    tile_id = source.tiles[0].tile_id
    np.testing.assert_array_equal(folder.label(tile_id), source.label(tile_id))


def test_a_stale_list_line_names_its_file_and_line(facade, tmp_path):
    for folder in ("images", "labels"):
        (tmp_path / folder).symlink_to(facade / folder)
    (tmp_path / "test.txt").write_text((facade / "test.txt").read_text())
    train = (facade / "train.txt").read_text().splitlines()
    (tmp_path / "train.txt").write_text("\n".join([*train[:4], "images/not_a_photo.jpg", *train[4:]]) + "\n")
    with pytest.raises(DataProblemsError) as caught:
        labelmefacade_source(tmp_path)
    [problem] = caught.value.problems
    assert problem.where == f"{tmp_path}/train.txt:5" and problem.tile_id == "not_a_photo"
    assert "lists 'images/not_a_photo.jpg', but" in problem.problem
    assert len(caught.value.usable.tiles) == 945


def test_shipped_config_passes_check_data(facade, capsys):
    code = main(["check-data", "--config", str(REPO / "configs" / "labelmefacade.yaml"), "--set",
                 f"data.root={facade}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[-1] == "checked 945 tiles of 'labelmefacade@0.5': no problems"
