"""KITTI Road: the data_road layout, written here as the benchmark ships it, and the real sample frames."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsseg.cli import main
from wsseg.core.metrics import max_f_measure, score_histograms
from wsseg.datasets import build_source
from wsseg.datasets.base import DatasetError

ROAD, NON_ROAD, INVALID = (255, 0, 255), (255, 0, 0), (0, 0, 0)
REPO = Path(__file__).resolve().parents[1]


def write_frame(root: Path, part: str, stem: str, size=(48, 160), road_rows=slice(30, 48), with_mask=True,
                mask_colour=ROAD):
    h, w = size
    rng = np.random.default_rng(abs(hash(stem)) % 2**32)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    image[road_rows] = (90, 90, 95)  # road: flat grey, learnable
    (root / part / "image_2").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / part / "image_2" / f"{stem}.png")
    if with_mask:
        category, number = stem.split("_")
        mask = np.zeros((h, w, 3), np.uint8)
        mask[:] = NON_ROAD
        mask[road_rows] = mask_colour
        mask[:2] = INVALID  # the invalid border KITTI marks black
        (root / part / "gt_image_2").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / part / "gt_image_2" / f"{category}_road_{number}.png")
        # The ego-lane mask of the "um" category: present in the layout, never read as the road mask.
        Image.fromarray(np.zeros_like(mask)).save(root / part / "gt_image_2" / f"{category}_lane_{number}.png")


@pytest.fixture
def data_road(tmp_path):
    root = tmp_path / "kitti" / "data_road"
    for stem in ("um_000000", "um_000001", "umm_000000", "uu_000007"):
        write_frame(root, "training", stem)
    write_frame(root, "testing", "um_000000", with_mask=False)
    return root


def test_frames_of_every_category_and_part_with_their_road_masks(data_road):
    source = build_source("kitti_road", data_road.parent)  # the folder holding data_road/ works too
    assert [(t.tile_id, t.part) for t in source.tiles] == [
        ("um_000000", "train"), ("um_000001", "train"), ("umm_000000", "train"), ("uu_000007", "train"),
        ("test_um_000000", "test")]
    assert source.tile("test_um_000000").label_path is None
    label = source.label("umm_000000")
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 255}
    assert (label[30:] == 1).all() and (label[:2] == 255).all() and (label[2:30] == 0).all()
    only_uu = build_source("kitti_road", data_road, categories=["uu"])
    assert [t.tile_id for t in only_uu.tiles] == ["uu_000007"]


def test_layout_errors_name_the_file(data_road, tmp_path):
    (data_road / "training" / "gt_image_2" / "uu_road_000007.png").unlink()
    with pytest.raises(DatasetError, match=r"uu_000007.png: no road mask .*uu_road_000007.png"):
        build_source("kitti_road", data_road)
    write_frame(data_road, "training", "uu_000007", mask_colour=(0, 255, 0))
    with pytest.raises(DatasetError, match=r"uu_road_000007.png: unknown colour \(0, 255, 0\)"):
        build_source("kitti_road", data_road).label("uu_000007")
    with pytest.raises(DatasetError, match="categories"):
        build_source("kitti_road", data_road, categories=["um", "city"])
    with pytest.raises(DatasetError, match="data_road layout"):
        build_source("kitti_road", tmp_path)


def test_real_frames_decode_as_the_benchmark_colours_say(shared_data):
    source = build_source("kitti_road", shared_data / "kitti_road")
    assert [t.tile_id for t in source.tiles] == ["um_000000", "um_000001"]
    label = source.label("um_000000")
    assert label.shape == source.image("um_000000").shape[:2] == (375, 1242)
    # Counted from the PNG's colours: 61,316 road (255,0,255), 398,964 non-road, 5,470 invalid.
    assert [(label == v).sum() for v in (1, 0, 255)] == [61316, 398964, 5470]


def test_max_f_of_a_perfect_and_of_a_known_scorer():
    target = np.array([[1, 1, 0, 0, 255]])
    perfect = max_f_measure(score_histograms(np.array([[0.9, 0.8, 0.1, 0.2, 0.9]]), target, positive_class=1))
    assert perfect["max_f"] == 1.0 and perfect["average_precision"] == 1.0 and perfect["precision"] == 1.0
    # Scores 0.9 (road), 0.6 (non-road), 0.4 (road), 0.1 (non-road): the best threshold keeps all
    # but the last pixel (P 2/3, R 1, F 0.8); keeping only the first gives P 1, R 1/2, F 2/3.
    mixed = max_f_measure(score_histograms(np.array([[0.9, 0.6, 0.4, 0.1]]), np.array([[1, 0, 1, 0]]), 1))
    assert mixed["max_f"] == pytest.approx(0.8) and mixed["precision"] == pytest.approx(2 / 3)
    assert mixed["recall"] == 1.0
    # Interpolated precision: 1 for recall ≤ 0.5, 2/3 above → (6 · 1 + 5 · 2/3) / 11.
    assert mixed["average_precision"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert max_f_measure(score_histograms(np.zeros((1, 3)), np.zeros((1, 3), int), 1))["max_f"] is None


def test_the_kitti_config_trains_and_reports_road_max_f(data_road, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--task", "i", "--config", str(REPO / "configs" / "kitti_road_fcn8s.yaml"), "--out", str(out),
                 "--set", f"data.root={data_road}", "--set", "data.scale=1.0", "--set", "split.n_labelled=2",
                 "--set", "split.n_tagged=0", "--set", "split.n_val=1", "--set", "train.epochs=1",
                 "--set", "train.iters_per_epoch=2", "--set", "train.batch_size=2", "--set", "train.crop_px=48",
                 "--set", "model.options.width=0.125",
                 "--set", "model.encoder_weights=null", "--set", "eval.window_px=48", "--set", "eval.stride_px=32",
                 "--set", "train.workers=0"])
    assert code == 0
    metrics = json.loads((out / "task_i" / "metrics.json").read_text())
    assert metrics["max_f"]["class"] == "road" and 0.0 <= metrics["max_f"]["max_f"] <= 1.0
    assert "MaxF" in (out / "task_i" / "report.md").read_text()


def test_naming_the_retired_max_f_class_says_what_replaced_it(data_road, tmp_path, capsys):
    code = main(["train", "--task", "i", "--config", str(REPO / "configs" / "kitti_road_fcn8s.yaml"),
                 "--out", str(tmp_path / "run"), "--set", f"data.root={data_road}", "--set", "eval.max_f_class=lane"])
    assert code == 2
    assert "config key eval.max_f_class was retired: KITTI Road's MaxF of road is scored" in capsys.readouterr().err
    assert not (tmp_path / "run" / "task_i").exists()
