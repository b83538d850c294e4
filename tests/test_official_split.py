"""`split.kind: official` on datasets written in their real on-disk layouts."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsseg.datasets import build_source
from wsseg.datasets.base import DatasetError
from wsseg.datasets.colour import encode_colour_mask
from wsseg.datasets.isprs import ALL_AREAS, OFFICIAL_TEST_AREAS, VAIHINGEN_CLASSES
from wsseg.datasets.splits import (group_by_part, load_split, make_split, official_split, official_vaihingen_split,
                                   save_split)
from wsseg.pipeline.config_files import config_from_dict, load_config
from wsseg.pipeline.data import load_source, make_split_for


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _ade20k(root, n_train=8, n_val=4):
    """ADEChallengeData2016 with its training and validation parts."""
    base = root / "ADEChallengeData2016"
    for folder, prefix, count in (("training", "ADE_train_", n_train), ("validation", "ADE_val_", n_val)):
        for n in range(1, count + 1):
            _png(base / "images" / folder / f"{prefix}{n:08d}.jpg", np.zeros((4, 5, 3), np.uint8))
            _png(base / "annotations" / folder / f"{prefix}{n:08d}.png", np.full((4, 5), 1 + n % 3, np.uint8))
    return root


def _cityscapes(root, counts=(("train", "aachen", 8), ("val", "lindau", 4), ("test", "berlin", 3)),
                test_labels=False):
    for part, city, count in counts:
        for n in range(count):
            frame = f"{city}_{n:06d}_000019"
            _png(root / "leftImg8bit" / part / city / f"{frame}_leftImg8bit.png", np.zeros((4, 5, 3), np.uint8))
            if part != "test" or test_labels:
                _png(root / "gtFine" / part / city / f"{frame}_gtFine_labelIds.png", np.full((4, 5), 7, np.uint8))
    return root


def _split_of(source, **counts):
    return official_split(group_by_part(source.tiles), dataset=source.name,
                          without_labels=[t.tile_id for t in source.tiles if t.label_path is None], **counts)


def _parts(source):
    return {t.tile_id: t.part for t in source.tiles}


def test_ade20k_trains_on_training_and_tests_on_validation(tmp_path):
    source = build_source("ade20k", _ade20k(tmp_path))
    split = _split_of(source, n_labelled=2, n_tagged=3, n_val=2, seed=5)
    part = _parts(source)
    # No public test labels: validation is drawn from training, the official validation part is the test part.
    assert {part[t] for t in split.labelled + split.tagged + split.val} == {"train"}
    assert split.test == [t.tile_id for t in source.tiles if t.part == "val"]
    assert (len(split.labelled), len(split.tagged), len(split.val), len(split.test)) == (2, 3, 2, 4)
    assert split.kind == "official"
    assert split.info == {"n_labelled": 2, "n_tagged": 3, "n_val": 2, "n_test": None, "parts": {"train": 8, "val": 4},
                          "val_from": "train", "test_from": "val"}
    assert _split_of(source, n_labelled=2, n_tagged=3, n_val=2, seed=5) == split
    others = [_split_of(source, n_labelled=2, n_tagged=3, n_val=2, seed=s) for s in range(6, 10)]
    assert any(o.labelled != split.labelled for o in others)
    # n_tagged None or larger than what is left: every remaining train tile is tagged.
    assert _split_of(source, n_labelled=2, n_tagged=None, n_val=2, seed=5).tagged == \
        _split_of(source, n_labelled=2, n_tagged=50, n_val=2, seed=5).tagged
    assert len(_split_of(source, n_labelled=2, n_tagged=None, n_val=2, seed=5).tagged) == 4
    capped = _split_of(source, n_labelled=2, n_val=2, seed=5, n_test=3)
    assert len(capped.test) == 3 and set(capped.test) < set(split.test)


def test_an_official_part_asked_for_more_than_it_holds_gives_all_with_a_warning(tmp_path, caplog):
    source = build_source("ade20k", _ade20k(tmp_path))  # train 8; val 4, the test part
    with caplog.at_level(logging.WARNING, logger="wsseg.datasets.splits"):
        split = _split_of(source, n_labelled=2, n_tagged=50, n_val=2, n_test=9, seed=5)
    assert (len(split.tagged), len(split.test)) == (4, 4)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "official split of 'ade20k': split.n_tagged is 50, but there are only 4 train tiles left after 2 labelled + "
        "2 val; all 4 are tagged",
        "official split of 'ade20k': split.n_test is 9, but there are only 4 tiles in the official val part it tests "
        "on (null: all of them, unwarned); all 4 are tested on"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wsseg.datasets.splits"):
        exact = _split_of(source, n_labelled=2, n_tagged=4, n_val=2, n_test=4, seed=5)
    assert (exact.tagged, exact.test) == (split.tagged, split.test) and not caplog.records
    # A seeded split of the same tiles refuses: its test tiles are what the other parts leave.
    with pytest.raises(DatasetError, match=r"2 labelled \+ 50 tagged \+ 2 val = 54 tiles, but there are only 12") \
            as refused:
        make_split([t.tile_id for t in source.tiles], n_labelled=2, n_tagged=50, n_val=2)
    assert "split.n_tagged" in refused.value.fix


def test_too_large_requests_name_the_counts(tmp_path):
    source = build_source("ade20k", _ade20k(tmp_path))
    with pytest.raises(DatasetError, match=r"'ade20k' asks for 7 labelled \+ 2 val tiles, but only 8 official train"):
        _split_of(source, n_labelled=7, n_val=2)
    with pytest.raises(DatasetError, match="n_test is 0"):
        _split_of(source, n_test=0)
    with pytest.raises(DatasetError, match="n_labelled must be a non-negative integer"):
        _split_of(source, n_labelled=-1)


def test_cityscapes_without_test_labels_tests_on_val(tmp_path, caplog):
    source = build_source("cityscapes", _cityscapes(tmp_path))
    with caplog.at_level("INFO", logger="wsseg.datasets.splits"):
        split = _split_of(source, n_labelled=3, n_tagged=2, n_val=2, seed=0)
    part = _parts(source)
    assert {part[t] for t in split.labelled + split.tagged + split.val} == {"train"}
    assert {part[t] for t in split.test} == {"val"} and len(split.test) == 4
    assert split.info["left_out"] == {"test without labels": 3}
    assert split.info["parts"] == {"train": 8, "val": 4, "test": 3}
    assert "leaves out 3 tiles (test without labels)" in caplog.text


def test_cityscapes_with_test_labels_chooses_checkpoints_on_val(tmp_path):
    source = build_source("cityscapes", _cityscapes(tmp_path, test_labels=True), test_labels=True)
    split = _split_of(source, n_labelled=3, n_tagged=None, n_val=2, seed=1)
    part = _parts(source)
    assert {part[t] for t in split.labelled + split.tagged} == {"train"} and len(split.tagged) == 5
    assert {part[t] for t in split.val} == {"val"} and len(split.val) == 2
    assert {part[t] for t in split.test} == {"test"} and len(split.test) == 3
    assert (split.info["val_from"], split.info["test_from"]) == ("val", "test")
    # Validation does not come out of train here, so all 8 train tiles can be labelled.
    assert len(_split_of(source, n_labelled=8, n_val=4).labelled) == 8
    with pytest.raises(DatasetError, match="asks for 5 val tiles, but the official val part has only 4"):
        _split_of(source, n_val=5)
    with pytest.raises(DatasetError, match="asks for 9 labelled tiles, but only 8 official train"):
        _split_of(source, n_labelled=9)


def test_folder_parts_and_datasets_without_parts(tmp_path):
    for part, count in (("train", 5), ("val", 3)):
        for n in range(count):
            _png(tmp_path / "img_dir" / part / f"{n:04d}.png", np.zeros((4, 5, 3), np.uint8))
            _png(tmp_path / "ann_dir" / part / f"{n:04d}.png", np.zeros((4, 5), np.uint8))
    options = {"mask_dir": "ann_dir/{part}", "class_names": ["a", "b"]}
    source = build_source("folder", tmp_path, image_dir="img_dir/{part}", **options)
    split = _split_of(source, n_labelled=1, n_tagged=None, n_val=1, seed=0)
    assert all(t.startswith("train_") for t in split.labelled + split.tagged + split.val)
    assert split.test == ["val_0000", "val_0001", "val_0002"]
    flat = build_source("folder", tmp_path, image_dir="img_dir/train", mask_dir="ann_dir/train", class_names=["a"])
    with pytest.raises(DatasetError, match="dataset 'folder' has no official parts") as refused:
        _split_of(flat)
    assert "split.kind: seeded" in refused.value.fix
    only_val = build_source("folder", tmp_path, image_dir="img_dir/{part}", parts=["val"], **options)
    with pytest.raises(DatasetError, match=r"'folder' has no labelled official train tiles \(parts: val 3\)"):
        _split_of(only_val)
    only_train = build_source("folder", tmp_path, image_dir="img_dir/{part}", parts=["train"], **options)
    with pytest.raises(DatasetError, match=r"no labelled official val or test tiles to test on \(parts: train 5\)") \
            as refused:
        _split_of(only_train)
    assert refused.value.fix == "set split.kind: seeded"


def _vaihingen(root):
    label = np.zeros((3, 4), np.uint8)
    for area in ALL_AREAS:
        for folder in ("top", "gts_for_participants"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "top" / f"top_mosaic_09cm_area{area}.tif", np.zeros((3, 4, 3), np.uint8),
                         photometric="rgb")
        tifffile.imwrite(root / "gts_for_participants" / f"top_mosaic_09cm_area{area}.tif",
                         encode_colour_mask(label, VAIHINGEN_CLASSES.palette), photometric="rgb")
    return root


def test_vaihingen_official_split_is_the_generic_one(tmp_path):
    source = build_source("vaihingen", _vaihingen(tmp_path))
    for seed in range(5):
        # The config's default n_tagged (21) is more than the 11 train tiles left: all of them are tagged.
        generic = _split_of(source, n_labelled=3, n_tagged=21, n_val=2, seed=seed)
        bare = official_vaihingen_split([t.tile_id for t in source.tiles], n_labelled=3, n_val=2, seed=seed)
        assert (generic.labelled, generic.val, generic.tagged, generic.test) == \
            (bare.labelled, bare.val, bare.tagged, bare.test)
    assert generic.test == [f"area{n}" for n in OFFICIAL_TEST_AREAS]


def test_config_with_official_split_runs_through_make_split_for(tmp_path):
    root = _cityscapes(tmp_path / "cityscapes")
    cfg = config_from_dict({"data": {"kind": "cityscapes", "root": str(root)},
                            "split": {"kind": "official", "seed": 3, "n_labelled": 2, "n_tagged": 4, "n_val": 1}})
    source = load_source(cfg)
    split = make_split_for(cfg, source)
    part = _parts(source)
    assert (len(split.labelled), len(split.tagged), len(split.val), len(split.test)) == (2, 4, 1, 4)
    assert {part[t] for t in split.test} == {"val"}
    assert split.info["n_tagged"] == 4 and split.info["parts"] == {"train": 8, "val": 4, "test": 3}
    save_split(tmp_path / "split.json", split)
    assert load_split(tmp_path / "split.json") == split
    # A seeded split draws from every labelled tile, never from the unlabelled test frames.
    cfg.split.kind = "seeded"
    seeded = make_split_for(cfg, source)
    assert not {t for t in seeded.all_tiles() if part[t] == "test"}
    assert len(seeded.all_tiles()) == 12


def test_real_single_part_layouts(shared_data):
    with pytest.raises(DatasetError, match=r"'ade20k' has no labelled official train tiles \(parts: val 3\)"):
        _split_of(build_source("ade20k", shared_data / "ade20k_challenge"))
    with pytest.raises(DatasetError, match=r"'cityscapes' has no labelled official train tiles \(parts: val 1\)"):
        _split_of(build_source("cityscapes", shared_data / "cityscapes"))
    with pytest.raises(DatasetError, match="dataset 'voc' has no official parts") as refused:
        _split_of(build_source("voc", shared_data / "voc"))
    assert "split.kind: seeded" in refused.value.fix


def test_real_ade20k_images_in_both_challenge_parts(shared_data, tmp_path):
    """The real validation images, also copied into the training part under training names."""
    real = shared_data / "ade20k_challenge" / "ADEChallengeData2016"
    base = tmp_path / "ADEChallengeData2016"
    shutil.copytree(real, base)
    for kind, suffix in (("images", ".jpg"), ("annotations", ".png")):
        (base / kind / "training").mkdir()
        for n in range(1, 4):
            for copy in range(2):
                shutil.copy(real / kind / "validation" / f"ADE_val_0000000{n}{suffix}",
                            base / kind / "training" / f"ADE_train_0000000{n}{copy}{suffix}")
    cfg = config_from_dict({"data": {"kind": "ade20k", "root": str(tmp_path)},
                            "split": {"kind": "official", "n_labelled": 2, "n_tagged": 10, "n_val": 1}})
    source = load_source(cfg)
    split = make_split_for(cfg, source)
    assert split.test == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]
    assert all(t.startswith("ADE_train_") for t in split.labelled + split.tagged + split.val)
    assert (len(split.labelled), len(split.tagged), len(split.val)) == (2, 3, 1)
    for tile_id in split.test + split.labelled:
        assert source.label(tile_id).shape == source.image(tile_id).shape[:2]


def test_the_reduced_cityscapes_config_draws_its_counts_from_the_official_folders(tmp_path):
    """configs/cityscapes_reduced_fcn8s.yaml on a Cityscapes copy of 950 train, 120 val and 5 test
    frames: 900 frames of train (850 N1 + 50 validation) and 100 of val (the test set), by seed."""
    root = _cityscapes(tmp_path / "cityscapes", counts=(("train", "aachen", 500), ("train", "bochum", 450),
                                                        ("val", "lindau", 120), ("test", "berlin", 5)))
    config = Path(__file__).resolve().parents[1] / "configs" / "cityscapes_reduced_fcn8s.yaml"
    cfg = load_config(config, [f"data.root={root}"])
    source = load_source(cfg)
    split = make_split_for(cfg, source)
    part = _parts(source)
    assert (len(split.labelled), len(split.tagged), len(split.val), len(split.test)) == (850, 0, 50, 100)
    assert {part[t] for t in split.labelled + split.val} == {"train"} and {part[t] for t in split.test} == {"val"}
    assert {t.split("_")[0] for t in split.labelled} == {"aachen", "bochum"}
    assert split.info["parts"] == {"train": 950, "val": 120, "test": 5}
    assert make_split_for(cfg, source) == split
    other = make_split_for(load_config(config, [f"data.root={root}", "split.seed=1"]), source)
    assert other.labelled != split.labelled and other.test != split.test
