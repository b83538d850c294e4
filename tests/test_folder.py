from pathlib import Path
import numpy as np
import pytest
from PIL import Image

from wsseg.datasets import build_source, known_kinds
from wsseg.datasets.base import DataProblemsError, DatasetError
from wsseg.datasets.colour import encode_colour_mask, save_index_png
from wsseg.datasets.folder import folder_source

PALETTE = ((10, 20, 30), (200, 0, 0), (0, 200, 0))


def _layout(root, names=("img10", "img2", "img1"), mask="index", suffix=""):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    labels = {}
    for i, name in enumerate(names):
        label = np.full((6, 7), i % 3, dtype=np.uint8)
        label[0, 0] = 255
        labels[name] = label
        Image.fromarray(np.full((6, 7, 3), i * 20, np.uint8)).save(root / "images" / f"{name}.png")
        if mask == "index":
            save_index_png(root / "masks" / f"{name}{suffix}.png", label, PALETTE)
        else:
            Image.fromarray(encode_colour_mask(label, PALETTE)).save(root / "masks" / f"{name}{suffix}.png")
    return labels


def test_index_masks_pair_by_stem_in_natural_order(tmp_path):
    labels = _layout(tmp_path)
    source = folder_source(tmp_path, "images", "masks", ["a", "b", "c"], in_mean=["a", "b"])
    assert [t.tile_id for t in source.tiles] == ["img1", "img2", "img10"]
    assert source.classes.in_mean == ("a", "b") and len(source.classes.palette) == 3
    for name, label in labels.items():
        np.testing.assert_array_equal(source.label(name), label)
    assert source.image("img2")[0, 0].tolist() == [20, 20, 20]


def test_colour_masks_and_mask_suffix(tmp_path):
    labels = _layout(tmp_path, mask="colour", suffix="_mask")
    source = folder_source(tmp_path, "images", "masks", ["a", "b", "c"], PALETTE, mask_format="colour",
                           ignore_colours=[(0, 0, 0)], mask_stem_suffix="_mask")
    np.testing.assert_array_equal(source.label("img10"), labels["img10"])
    with pytest.raises(DatasetError, match="needs the palette"):
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"], mask_format="colour")


def test_image_without_mask_names_the_file(tmp_path):
    _layout(tmp_path)
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(tmp_path / "images" / "orphan.jpg")
    with pytest.raises(DatasetError, match=r"orphan.jpg: no mask .*orphan"):
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"])
    with pytest.raises(DatasetError, match="mask folder not found"):
        folder_source(tmp_path, "images", "nope", ["a", "b", "c"])


def test_every_unpaired_or_mis_sized_image_is_reported_at_once_with_the_usable_rest(tmp_path):
    _layout(tmp_path, names=("a1", "a2", "a3", "a4"))
    (tmp_path / "masks" / "a2.png").unlink()
    (tmp_path / "masks" / "a4.png").unlink()
    save_index_png(tmp_path / "masks" / "a3.png", np.zeros((5, 7), np.uint8), PALETTE)
    with pytest.raises(DataProblemsError) as caught:
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"])
    problems = caught.value.problems
    assert [(p.tile_id, Path(p.where).name) for p in problems] == [("a2", "a2.png"), ("a3", "a3.png"),
                                                                     ("a4", "a4.png")]
    assert "no mask" in problems[0].problem and "mask is 5×7" in problems[1].problem
    assert "(and 2 more problem(s))" in str(caught.value)
    # What could be listed is still there, for a caller that skips bad tiles.
    assert [t.tile_id for t in caught.value.usable.tiles] == ["a1"]


def test_index_out_of_range_and_stored_ignore_value(tmp_path):
    _layout(tmp_path, names=("x",))
    save_index_png(tmp_path / "masks" / "x.png", np.array([[0] * 7] * 5 + [[1, 2, 7, 0, 0, 0, 0]], np.uint8), PALETTE)
    with pytest.raises(DatasetError, match=r"x.png: class index 7 at pixel \(x=2, y=5\)"):
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"]).label("x")
    # A dataset whose masks use 7 for void: it comes out as 255.
    label = folder_source(tmp_path, "images", "masks", ["a", "b", "c"], ignore_index=7).label("x")
    assert label[5, :3].tolist() == [1, 2, 255]
    with pytest.raises(DatasetError, match="collides"):
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"], ignore_index=1)


def test_build_source_kinds_and_errors(tmp_path):
    _layout(tmp_path)
    source = build_source("folder", tmp_path, image_dir="images", mask_dir="masks", class_names=["a", "b", "c"])
    assert len(source.tiles) == 3
    for kind in ("vaihingen", "vaihingen_mmseg", "dubai", "folder", "voc", "cityscapes", "ade20k", "camvid"):
        assert kind in known_kinds()
    with pytest.raises(DatasetError, match=r"unknown dataset kind 'potsdam'; known kinds: .*vaihingen"):
        build_source("potsdam", tmp_path)
    with pytest.raises(DatasetError, match=r"has no option\(s\) \['colour'\]"):
        build_source("dubai", tmp_path, colour="x")


def test_rescaled_source_resizes_images_and_labels_consistently(tmp_path):
    from wsseg.datasets.base import ClassSpec, DatasetError, Tile, TileSource, rescaled

    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = 200
    label = np.zeros((40, 60), np.uint8)
    label[:, 30:] = 1
    source = TileSource("toy", ClassSpec(("a", "b"), ((0, 0, 0), (255, 255, 255))),
                        [Tile("t", Path("t.png"), Path("t_mask.png"))],
                        read_image=lambda path: image, read_label=lambda path: label)
    half = rescaled(source, 0.5)
    assert half.image("t").shape == (20, 30, 3) and half.label("t").shape == (20, 30)
    assert set(np.unique(half.label("t"))) == {0, 1}  # nearest neighbour: no blended class ids
    assert (half.label("t")[:, 15:] == 1).all() and (half.image("t")[:, 16:] == 200).all()
    assert rescaled(source, 1.0) is source
    with pytest.raises(DatasetError, match="data.scale"):
        rescaled(source, 0.0)


def test_one_folder_pair_per_part(tmp_path):
    for part in ("train", "val"):
        (tmp_path / part / "images").mkdir(parents=True)
        (tmp_path / part / "masks").mkdir(parents=True)
        for name in ("0001", "0002"):
            Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(tmp_path / part / "images" / f"{name}.png")
            save_index_png(tmp_path / part / "masks" / f"{name}.png", np.zeros((6, 7), np.uint8), PALETTE)
    (tmp_path / "test" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(tmp_path / "test" / "images" / "0001.png")
    source = folder_source(tmp_path, "{part}/images", "{part}/masks", ["a", "b", "c"])
    # Parts reuse file names, so ids carry the part; the test part ships without masks.
    assert [(t.tile_id, t.part) for t in source.tiles] == [
        ("train_0001", "train"), ("train_0002", "train"), ("val_0001", "val"), ("val_0002", "val"),
        ("test_0001", "test")]
    assert source.tile("test_0001").label_path is None
    assert source.label("val_0002").shape == (6, 7)
    only_val = folder_source(tmp_path, "{part}/images", "{part}/masks", ["a", "b", "c"], parts=["val"])
    assert [t.tile_id for t in only_val.tiles] == ["val_0001", "val_0002"]
    with pytest.raises(DatasetError, match="tile id '0001' also used by"):
        folder_source(tmp_path, "{part}/images", "{part}/masks", ["a", "b", "c"], prefix_part=False)
    with pytest.raises(DatasetError, match="train/nothing: mask folder not found"):
        folder_source(tmp_path, "{part}/images", "{part}/nothing", ["a", "b", "c"], parts=["train"])
    (tmp_path / "val" / "masks" / "0002.png").unlink()
    with pytest.raises(DatasetError, match=r"val/images/0002.png: no mask"):
        folder_source(tmp_path, "{part}/images", "{part}/masks", ["a", "b", "c"])
    with pytest.raises(DatasetError, match=r"not among train, val, test"):
        folder_source(tmp_path, "{part}/images", "{part}/masks", ["a", "b", "c"], parts=["training"])
    with pytest.raises(DatasetError, match=r"needs \{part\} in image_dir"):
        folder_source(tmp_path, "train/images", "train/masks", ["a", "b", "c"], parts=["train"])
    assert {t.part for t in folder_source(tmp_path, "train/images", "train/masks", ["a", "b", "c"]).tiles} == {None}


def _listed_layout(root):
    """One image folder, masks beside, and the dataset's own lists in three styles: stems, file
    names, paths relative to the root (as Stanford Background's and LabelMeFacade's lists are)."""
    _layout(root, names=("a1", "a2", "a3", "a4", "a5"))
    (root / "images" / "filelist.txt").write_text("/home/author/images/a1.png\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("a1\na2.png\n\nimages/a3.png\n")
    (root / "splits" / "val.txt").write_text("a4\n")


def test_split_files_give_each_listed_image_its_part(tmp_path):
    _listed_layout(tmp_path)
    lists = {"train": "splits/train.txt", "val": "splits/val.txt"}
    source = folder_source(tmp_path, "images", "masks", ["a", "b", "c"], split_files=lists)
    # Bare stems as ids; a5 is in no list, so not a tile (as MMSegmentation's ann_file reads them).
    assert [(t.tile_id, t.part) for t in source.tiles] == [("a1", "train"), ("a2", "train"), ("a3", "train"),
                                                           ("a4", "val")]
    only_val = folder_source(tmp_path, "images", "masks", ["a", "b", "c"], split_files=lists, parts="val")
    assert [(t.tile_id, t.part) for t in only_val.tiles] == [("a4", "val")]
    with pytest.raises(DatasetError, match=r"data.options.parts \['test'\] are not among train, val"):
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"], split_files=lists, parts=["test"])
    with pytest.raises(DatasetError, match=r"splits/test.txt: list file of part 'test' not found"):
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"], split_files={"test": "splits/test.txt"})
    with pytest.raises(DatasetError, match=r"data.options.split_files: part 'training' is not among"):
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"], split_files={"training": "splits/train.txt"})
    with pytest.raises(DatasetError, match=r"data.options.split_files must map official parts to list files"):
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"], split_files="splits/train.txt")
    # The official split then keeps inside them: no test part, so val is scored as test.
    from wsseg.datasets.splits import group_by_part, official_split

    split = official_split(group_by_part(source.tiles), n_labelled=1, n_tagged=None, n_val=1)
    assert split.test == ["a4"] and set(split.labelled + split.val + split.tagged) == {"a1", "a2", "a3"}


def test_a_list_line_naming_no_image_names_the_list_file_and_line(tmp_path):
    _listed_layout(tmp_path)
    (tmp_path / "splits" / "train.txt").write_text("a1\na2.jpg\nimages/a9.png\nother/a3.png\na1\n")
    (tmp_path / "splits" / "val.txt").write_text("a4\na1\n")
    with pytest.raises(DataProblemsError) as caught:
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"],
                      split_files={"train": "splits/train.txt", "val": "splits/val.txt"})
    problems = {p.where.removeprefix(f"{tmp_path}/"): p for p in caught.value.problems}
    assert sorted(problems) == ["splits/train.txt:2", "splits/train.txt:3", "splits/train.txt:4",
                                "splits/train.txt:5", "splits/val.txt:2"]
    assert "lists 'a2.jpg', but" in problems["splits/train.txt:2"].problem  # a2.png is there, not a2.jpg
    assert problems["splits/train.txt:3"].tile_id == "a9" and "delete line 3 of train.txt" in problems[
        "splits/train.txt:3"].fix
    assert "lists 'other/a3.png'" in problems["splits/train.txt:4"].problem  # a namesake in another folder
    # Listed twice in one part: a warning; in two parts: a problem of that image.
    assert not problems["splits/train.txt:5"].blocking and "already listed at" in problems["splits/train.txt:5"].problem
    assert problems["splits/val.txt:2"].blocking and "for part 'train'" in problems["splits/val.txt:2"].problem
    assert str(caught.value).startswith(f"{tmp_path}/splits/train.txt:2: lists 'a2.jpg'")
    assert [t.tile_id for t in caught.value.usable.tiles] == ["a1", "a4"]


def test_a_string_where_a_list_is_expected(tmp_path):
    _listed_layout(tmp_path)
    # Not the letters s, p, l, i, t, s: the key, what it needs, and where list files go instead.
    with pytest.raises(DatasetError, match=r"data.options.parts \['splits'\] reads one folder pair per part and "
                                           r"needs \{part\} in image_dir .* data.options.split_files"):
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"], parts="splits")
    with pytest.raises(DatasetError, match=r"data.options.parts \['splits'\] are not among train, val, test"):
        folder_source(tmp_path, "{part}", "masks", ["a", "b", "c"], parts="splits")
    with pytest.raises(DatasetError, match=r"data.options.class_names must be a list of names, e.g. \[abc\]"):
        folder_source(tmp_path, "images", "masks", "abc")
    with pytest.raises(DatasetError, match=r"data.options.in_mean must be a list"):
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"], in_mean="a")


def test_a_stored_unknown_value_error_names_the_ignore_option(tmp_path):
    _layout(tmp_path, names=("x",))
    save_index_png(tmp_path / "masks" / "x.png", np.array([[0, 1, 15, 2, 0, 0, 0]] * 6, np.uint8), PALETTE)
    with pytest.raises(DatasetError, match=r"x.png: class index 15 at pixel \(x=2, y=0\) is neither a class 0..2 nor "
                                           r"the ignore value 255 \(data.options.ignore_index\); if 15 marks unlabelled "
                                           r"pixels, set data.options.ignore_index: 15"):
        folder_source(tmp_path, "images", "masks", ["a", "b", "c"]).label("x")
    label = folder_source(tmp_path, "images", "masks", ["a", "b", "c"], ignore_index=15).label("x")
    assert label[0].tolist() == [0, 1, 255, 2, 0, 0, 0]


def test_without_a_palette_no_class_is_drawn_in_the_ignore_black(tmp_path):
    _layout(tmp_path)
    palette = folder_source(tmp_path, "images", "masks", ["sky", "b", "c"]).classes.palette
    assert (0, 0, 0) not in palette and len(set(palette)) == 3
