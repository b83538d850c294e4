"""Real weak labels from a user's tags file (CSV or JSON, image- or box-level): read, checked and
used for N2 images that have no mask."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from wsseg.cli import main
from wsseg.datasets import build_source
from wsseg.datasets.base import DatasetError
from wsseg.datasets.user_tags import read_user_tags
from wsseg.pipeline.config_files import config_from_dict
from wsseg.pipeline.data import make_split_for

CLASSES = ["ground", "roof", "tree"]
PALETTE = [[128, 128, 128], [200, 0, 0], [0, 160, 0]]


def write_folder(root: Path, labelled: int = 6, unlabelled: int = 4, size=(48, 64)) -> Path:
    """`labelled` images with index masks, then `unlabelled` images without (ids img_00 …)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for n in range(labelled + unlabelled):
        mask = np.zeros(size, np.uint8)
        mask[: size[0] // 2, : size[1] // 2] = 1
        mask[size[0] // 2:, size[1] // 2:] = 2
        image = np.asarray(PALETTE, np.uint8)[mask] + rng.integers(0, 40, (*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"img_{n:02d}.png")
        if n < labelled:
            Image.fromarray(mask).save(root / "masks" / f"img_{n:02d}.png")
    return root


@pytest.fixture(autouse=True)
def constant_background_kept(monkeypatch):
    """The tiny single-stage model may never find ground: keep its constant channel."""
    monkeypatch.setattr("wsseg.pipeline.pseudo_masks.REJECT_BACKGROUND_BELOW_RECALL", 0.0)


def source_of(root):
    return build_source("folder", root, image_dir="images", mask_dir="masks", class_names=CLASSES,
                        palette=PALETTE, masks_optional=True)


def test_csv_image_tags_by_file_name_stem_or_id(tmp_path):
    root = write_folder(tmp_path / "data")
    tags_file = tmp_path / "tags.csv"
    tags_file.write_text("image,classes\nimg_06.png,roof;tree\nimg_07,ground\nimg_08, tree ; roof ;\n")
    tags = read_user_tags(tags_file, source_of(root), mode="image")
    assert {t: [(c.y, c.x, c.h, c.w, c.classes) for c in crops] for t, crops in tags.items()} == {
        "img_06": [(0, 0, 48, 64, (1, 2))], "img_07": [(0, 0, 48, 64, (0,))], "img_08": [(0, 0, 48, 64, (1, 2))]}
    # data.scale halves the images, so the whole-image box halves too.
    assert read_user_tags(tags_file, source_of(root), mode="image", scale=0.5)["img_07"][0].h == 24


def test_json_box_tags(tmp_path):
    root = write_folder(tmp_path / "data")
    tags_file = tmp_path / "tags.json"
    tags_file.write_text(json.dumps({"img_09": [{"box": [0, 0, 24, 32], "classes": ["roof"]},
                                                {"box": [24, 32, 24, 32], "classes": ["tree", "ground"]}]}))
    tags = read_user_tags(tags_file, source_of(root), mode="grid")
    assert [(c.y, c.x, c.h, c.w, c.classes) for c in tags["img_09"]] == [(0, 0, 24, 32, (1,)), (24, 32, 24, 32, (0, 2))]


@pytest.mark.parametrize("name, text, mode, message", [
    ("tags.csv", "image,classes\nimg_06,roof\nimg_07,chimney\n", "image",
     r"tags.csv:3: class 'chimney' is not a class of 'folder' \(ground, roof, tree\)"),
    ("tags.csv", "image,classes\nimg_99,roof\n", "image", r"tags.csv:2: image 'img_99' is not in the dataset"),
    ("tags.csv", "name,labels\nimg_06,roof\n", "image", r"needs the columns image and classes"),
    ("tags.csv", "image,classes\nimg_06,\n", "image", r"tags.csv:2: image 'img_06' has no class tag"),
    ("tags.csv", "image,classes\nimg_06,roof\nimg_06.png,tree\n", "image", r"tags.csv:3: image 'img_06.png' is tagged twice"),
    ("tags.csv", "image,classes,y,x,h,w\nimg_06,roof,0,0,10,10\n", "image", r"a box tag, but weak.tags is 'image'"),
    ("tags.csv", "image,classes,y,x,h,w\nimg_06,roof,40,0,20,10\n", "grid", r"is not inside image 'img_06' \(48×64"),
    ("tags.csv", "image,classes,y,x,h,w\nimg_06,roof,a,0,20,10\n", "grid", r"whole pixel numbers"),
    ("tags.json", '{"img_06": "roof"}', "image", r"key 'img_06': expected a list of class names"),
    ("tags.json", "{not json", "image", r"tags.json: not valid JSON"),
    ("tags.txt", "img_06 roof", "image", r"a tags file is .csv or .json"),
])
def test_bad_tags_files_name_file_line_and_value(tmp_path, name, text, mode, message):
    root = write_folder(tmp_path / "data")
    (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_user_tags(tmp_path / name, source_of(root), mode=mode)


def tags_config(tmp_path: Path, root: Path, tags_file: Path, **split) -> Path:
    cfg = {
        "name": "user_tags",
        "data": {"kind": "folder", "root": str(root),
                 "options": {"image_dir": "images", "mask_dir": "masks", "class_names": CLASSES, "palette": PALETTE,
                             "masks_optional": True}},
        "split": {"n_labelled": 2, "n_tagged": 0, "n_val": 1, **split},
        "model": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
        "train": {"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "crop_px": 32, "workers": 0,
                  "precision": "fp32"},
        "eval": {"window_px": 48, "stride_px": 32, "batch_size": 2, "num_triptychs": 1},
        "weak": {"tags": "image", "tags_file": str(tags_file),
                 "single_stage": {"backbone": "resnet38", "width": 0.0625, "epochs": 1, "iters_per_epoch": 2,
                                  "batch_size": 2, "crop_px": 48, "self_supervised_from_epoch": 2,
                                  "constant_background": "ground"},
                 "pseudo": {"scales": [1.0], "use_pamr": False, "crf": False}},
    }
    path = tmp_path / "user_tags.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tagged_images_without_masks_join_n2(tmp_path):
    root = write_folder(tmp_path / "data")
    tags_file = tmp_path / "tags.csv"
    tags_file.write_text("image,classes\nimg_06,roof;tree\nimg_07,ground;roof\nimg_08,tree\n")  # img_09: untagged
    cfg = config_from_dict(yaml.safe_load(tags_config(tmp_path, root, tags_file).read_text()))
    split = make_split_for(cfg, source_of(root))
    assert split.tagged == ["img_06", "img_07", "img_08"]
    assert len(split.labelled) == 2 and len(split.val) == 1 and len(split.test) == 3
    assert not {"img_06", "img_07", "img_08", "img_09"} & {*split.labelled, *split.val, *split.test}


def test_task_ii_learns_from_a_tags_file(tmp_path):
    root = write_folder(tmp_path / "data")
    tags_file = tmp_path / "tags.csv"
    tags_file.write_text("image,classes\nimg_06,ground;roof;tree\nimg_07,ground;roof\nimg_08,ground;tree\n")
    run = tmp_path / "run"
    assert main(["train", "--task", "ii", "--config", str(tags_config(tmp_path, root, tags_file)),
                 "--out", str(run)]) == 0
    tags = json.loads((run / "crop_tags.json").read_text())
    assert tags["tiles"]["img_07"] == [[0, 0, 48, 64, [0, 1]]]
    assert (run / "pseudo_masks" / "img_08.png").is_file() and (run / "task_ii" / "metrics.json").is_file()


def test_an_n2_image_with_a_mask_but_no_tags_is_an_error(tmp_path, capsys):
    root = write_folder(tmp_path / "data")
    tags_file = tmp_path / "tags.csv"
    tags_file.write_text("image,classes\nimg_06,roof\n")
    config = tags_config(tmp_path, root, tags_file, n_tagged=1)
    assert main(["train", "--task", "ii", "--config", str(config), "--out", str(tmp_path / "run")]) != 0
    assert "no tags for 1 N2 image(s) of the split" in capsys.readouterr().err


def test_a_bad_tags_file_stops_task_all_before_task_i_trains(tmp_path, capsys):
    root = write_folder(tmp_path / "data")
    tags_file = tmp_path / "tags.csv"
    tags_file.write_text("image,classes\nimg_06,roof\nimg_07,chimney\n")
    config = tags_config(tmp_path, root, tags_file)
    assert main(["train", "--task", "all", "--config", str(config), "--out", str(tmp_path / "run")]) != 0
    assert "tags.csv:3: class 'chimney'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "task_i").exists()


def test_task_all_with_tagged_images_without_masks_reports_no_ground_truth(tmp_path):
    """The README's real-tags path end to end: task i, the single-stage model, the pseudo masks,
    task ii and the comparison report, whose samples are N2 images that have no mask."""
    root = write_folder(tmp_path / "data")
    tags_file = tmp_path / "tags.json"
    tags_file.write_text(json.dumps({"img_06.png": ["ground", "roof", "tree"], "img_07": ["ground", "roof"],
                                     "img_08": ["ground", "tree"]}))
    config = tags_config(tmp_path, root, tags_file)
    run = tmp_path / "run"
    assert main(["train", "--task", "all", "--config", str(config), "--out", str(run),
                 "--set", "eval.num_triptychs=2"]) == 0
    for stage in ("task_i", "single_stage", "pseudo_masks", "task_ii"):
        assert (run / stage / "done.json").is_file(), stage
    comparison = json.loads((run / "comparison.json").read_text())
    # The N2 masks have nothing to be scored against; the calibration tiles (N1, with masks) do.
    quality = comparison["pseudo_masks"]
    assert quality["tiles"] == 3 and quality["tiles_with_ground_truth"] == 0
    assert "miou_final" not in quality and set(quality["calibration_precision"]) == set(CLASSES)
    md = (run / "comparison.md").read_text()
    assert "The 3 N2 images have no ground truth" in md
    for tile_id in ("img_06", "img_07"):
        assert (run / f"pseudo_{tile_id}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"- [{tile_id}: image | pseudo mask | no ground truth](pseudo_{tile_id}.png)" in md


def test_the_oracle_without_n2_masks_stops_before_task_i_trains(tmp_path, capsys):
    root = write_folder(tmp_path / "data")
    tags_file = tmp_path / "tags.csv"
    tags_file.write_text("image,classes\nimg_06,roof\n")
    config = tags_config(tmp_path, root, tags_file)
    assert main(["train", "--task", "all", "--oracle", "--config", str(config), "--out", str(tmp_path / "run")]) != 0
    assert "the oracle needs the N2 pixel labels, and 1 N2 tile(s) have none (first: 'img_06')" in capsys.readouterr().err
    assert not (tmp_path / "run" / "task_i").exists()
