import json
import math

import numpy as np
import pytest

from wsseg.core.io import atomic_write_json as write_json_atomic
from wsseg.core.io import to_jsonable
from wsseg.core.metrics import segmentation_metrics
from wsseg.core.report import write_report
from wsseg.datasets.colour import encode_colour_mask as colorize
from wsseg.pipeline.comparison_report import write_comparison_report
from wsseg.pipeline.seed_reports import aggregate_markdown, write_seed_summary
from wsseg.pipeline.seeds import aggregate_seeds

NAMES = ["a", "b", "c", "d"]
PALETTE = [(255, 255, 255), (0, 0, 255), (0, 255, 0), (255, 0, 0)]
# Hand matrix: class d never occurs and is never predicted → NaN scores, null in JSON.
CM = np.array([[2, 1, 0, 0],
               [1, 1, 0, 0],
               [0, 1, 1, 0],
               [0, 0, 0, 0]])
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metrics_with_eroded():
    m = segmentation_metrics(CM, NAMES, ["a", "b", "c"])
    eroded_cm = CM.copy()
    eroded_cm[0, 1] = 0  # a's IoU becomes 2/3 on eroded ground truth
    m["eroded"] = segmentation_metrics(eroded_cm, NAMES, ["a", "b", "c"])
    m["majority_baseline_miou"] = 0.1
    return m


def toy_sample(seed=0, h=24, w=32):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    gt = rng.integers(0, 4, (h, w)).astype(np.uint8)
    gt[:3] = 255
    pred = rng.integers(0, 4, (h, w)).astype(np.uint8)
    return image, gt, pred


def is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_write_report_files_json_roundtrip_and_table(tmp_path):
    m = metrics_with_eroded()
    image, gt, pred = toy_sample()
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_miou": None if e == 1 else 0.1 * e, "lr": 1e-3}
               for e in range(3)]
    written = write_report(tmp_path / "run", m, NAMES, PALETTE, history, [("area 7", image, gt, pred)],
                           "toy run", confusion=CM)
    run = tmp_path / "run"
    for name in ["iou_bars.png", "confusion.png", "curves.png", "triptych_area_7.png"]:
        assert is_png(run / name), name
        assert written[name] == run / name
    assert not list(run.glob(".*tmp"))  # no temp file left behind

    loaded = json.loads((run / "metrics.json").read_text())
    assert loaded["per_class"]["d"]["iou"] is None and loaded["per_class"]["d"]["f1"] is None
    assert loaded["per_class"]["a"]["iou"] == pytest.approx(0.5)
    assert loaded["miou"] == pytest.approx(m["miou"])
    assert loaded["eroded"]["per_class"]["a"]["iou"] == pytest.approx(2 / 3)
    assert loaded["classes_in_mean"] == ["a", "b", "c"]

    md = (run / "report.md").read_text()
    assert md.startswith("# toy run")
    # a: tp 2, gt 3, pred 3 → IoU 0.5, F1, precision, recall 2/3; eroded: gt 2, pred 3 → IoU 2/3, F1 0.8
    assert "| a | yes | 0.500 | 0.667 | 0.667 | 0.667 | 3 | 0.667 | 0.800 |" in md
    assert "| b | yes | 0.250 | 0.400 | 0.333 | 0.500 | 2 |" in md
    assert "| d | no | – | – | – | – | 0 | – | – |" in md
    # mIoU over a, b, c = (0.5 + 0.25 + 0.5) / 3
    assert "mIoU **0.417**" in md and "majority baseline mIoU 0.100" in md
    assert "eroded ground truth: mIoU" in md
    assert "(triptych_area_7.png)" in md and "(confusion.png)" in md


def test_confusion_figure_from_metrics_and_other_baseline_key(tmp_path):
    m = segmentation_metrics(CM, NAMES)
    m["confusion_matrix"] = CM.tolist()
    m["baseline_majority_miou"] = 0.25
    write_report(tmp_path, m, NAMES, PALETTE, [], [], "cm in metrics")
    assert is_png(tmp_path / "confusion.png")
    assert "majority baseline mIoU 0.250" in (tmp_path / "report.md").read_text()


def test_tiles_skipped_for_bad_files_are_named_in_the_report(tmp_path):
    m = segmentation_metrics(CM, NAMES)
    m["skipped_tiles"] = ["area3", "area9"]
    write_report(tmp_path, m, NAMES, PALETTE, [], [], "skipped")
    assert "2 tile(s) were left out of this run for bad files" in (tmp_path / "report.md").read_text()
    assert "area3, area9" in (tmp_path / "report.md").read_text()
    write_report(tmp_path / "none", segmentation_metrics(CM, NAMES), NAMES, PALETTE, [], [], "none skipped")
    assert "left out" not in (tmp_path / "none" / "report.md").read_text()


def test_write_report_without_confusion_history_or_eroded(tmp_path):
    m = segmentation_metrics(CM, NAMES)
    write_report(tmp_path, m, NAMES, PALETTE, [], [], "bare")
    assert is_png(tmp_path / "iou_bars.png")
    assert not (tmp_path / "confusion.png").exists() and not (tmp_path / "curves.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "eroded" not in md.split("## Per class")[1].split("\n\n")[1]


def test_comparison_report(tmp_path):
    task_i = segmentation_metrics(CM, NAMES, ["a", "b", "c"])
    better = CM.copy()
    better[0, 1], better[1, 1] = 0, 3
    task_ii = segmentation_metrics(better, NAMES, ["a", "b", "c"])
    pseudo = {"coverage": 0.8, "miou_raw": 0.41, "miou_crf": None, "miou_final": 0.52,
              "calibration_tiles": ["t7", "t9"], "classes_never_labelled": [],
              "per_class": {n: {"iou_raw": 0.3, "iou_final": 0.4} for n in NAMES}}
    image, gt, pseudo_mask = toy_sample(1)
    returned = write_comparison_report(tmp_path, task_i, task_ii, pseudo, NAMES, PALETTE,
                                       [("t1", image, pseudo_mask, gt)])
    assert returned == {"task_i": task_i, "task_ii": task_ii, "pseudo_masks": pseudo}
    comp = json.loads((tmp_path / "comparison.json").read_text())
    assert set(comp) == {"task_i", "task_ii", "pseudo_masks"}
    # the JSON form (nulls) and the in-memory form (NaN) aggregate the same
    assert to_jsonable(aggregate_seeds([comp])) == to_jsonable(aggregate_seeds([returned]))
    assert comp["pseudo_masks"]["miou_crf"] is None and comp["pseudo_masks"]["coverage"] == 0.8
    assert is_png(tmp_path / "comparison_iou.png") and is_png(tmp_path / "pseudo_t1.png")
    md = (tmp_path / "comparison.md").read_text()
    # task ii matrix: a tp 2, gt 2, pred 3 → 2/3; b tp 3, gt 4, pred 4 → 3/5; c unchanged 1/2
    assert "| a | 0.500 | 0.667 | +0.167 |" in md
    assert "| b | 0.250 | 0.600 | +0.350 |" in md
    assert "| d (not in mean) | – | – | – |" in md
    assert "| **mIoU** | 0.417 | 0.589 | +0.172 |" in md
    assert "| coverage | 0.800 |" in md and "| miou_crf | – |" in md
    assert "| calibration_tiles | t7, t9 |" in md and "| classes_never_labelled | none |" in md
    assert "| a | 0.300 | 0.400 |" in md


def test_pseudo_samples_of_images_without_masks_say_there_is_no_ground_truth(tmp_path):
    task_i = segmentation_metrics(CM, NAMES, ["a", "b", "c"])
    image, gt, pseudo_mask = toy_sample(2)
    # One N2 image with a mask, two tagged without (a user's tags file): the mIoUs cover the one.
    pseudo = {"coverage": 0.5, "tiles": 3, "tiles_with_ground_truth": 1, "miou_final": 0.4}
    write_comparison_report(tmp_path, task_i, task_i, pseudo, NAMES, PALETTE,
                            [("t1", image, pseudo_mask, gt), ("t2", image, pseudo_mask, None)])
    assert is_png(tmp_path / "pseudo_t1.png") and is_png(tmp_path / "pseudo_t2.png")
    md = (tmp_path / "comparison.md").read_text()
    assert "2 of the 3 N2 images have no ground truth (tagged without a mask): the N2 mIoUs below are over the other 1." in md
    assert "- [t1: image | pseudo mask | ground truth](pseudo_t1.png)" in md
    assert "- [t2: image | pseudo mask | no ground truth](pseudo_t2.png)" in md
    assert "No ground truth for the N2 images tagged without a mask" in md
    # Every N2 image with its mask: nothing to say.
    write_comparison_report(tmp_path, task_i, task_i, {**pseudo, "tiles_with_ground_truth": 3}, NAMES, PALETTE,
                            [("t1", image, pseudo_mask, gt)])
    assert "no ground truth" not in (tmp_path / "comparison.md").read_text().lower()


def test_a_list_of_a_hundred_tiles_is_a_short_cell(tmp_path):
    task_i = segmentation_metrics(CM, NAMES, ["a", "b", "c"])
    tiles = [f"tile_{i:03d}" for i in range(100)]
    pseudo = {"coverage": 0.8, "calibration_tiles": tiles}
    write_comparison_report(tmp_path, task_i, task_i, pseudo, NAMES, PALETTE, [])
    row = next(line for line in (tmp_path / "comparison.md").read_text().splitlines() if "calibration_tiles" in line)
    assert row == "| calibration_tiles | tile_000, tile_001, tile_002, tile_003, tile_004, … (95 more) |"
    # The JSON keeps every tile.
    assert json.loads((tmp_path / "comparison.json").read_text())["pseudo_masks"]["calibration_tiles"] == tiles


def test_comparison_report_with_the_oracle(tmp_path):
    task_i = segmentation_metrics(CM, NAMES, ["a", "b", "c"])
    better = CM.copy()
    better[0, 1], better[1, 1] = 0, 3
    task_ii = segmentation_metrics(better, NAMES, ["a", "b", "c"])
    perfect = np.diag([3, 4, 2, 0])
    oracle = segmentation_metrics(perfect, NAMES, ["a", "b", "c"])
    returned = write_comparison_report(tmp_path, task_i, task_ii, None, NAMES, PALETTE, [], oracle=oracle)
    # a: i 0.5, ii 2/3, oracle 1 → (1/6) / (1/2) = 1/3; b: 0.25, 0.6, 1 → 0.35 / 0.75
    gap = returned["gap_closed"]
    assert gap["per_class"]["a"] == pytest.approx(1 / 3) and gap["per_class"]["b"] == pytest.approx(0.35 / 0.75)
    assert math.isnan(gap["per_class"]["d"])
    assert gap["miou"] == pytest.approx((0.589 - 0.417) / (1 - 0.417), abs=2e-3)
    md = (tmp_path / "comparison.md").read_text()
    assert "| a | 0.500 | 0.667 | 1.000 | 0.333 |" in md and "| d | – | – | – | – |" in md
    comp = json.loads((tmp_path / "comparison.json").read_text())
    assert comp["gap_closed"]["per_class"]["d"] is None
    agg = aggregate_seeds([comp, returned])
    assert agg["oracle"]["gap_closed"]["mean"] == pytest.approx(gap["miou"])
    assert "gap closed by task ii" in aggregate_markdown(agg)


def comparison(i_a, ii_a, i_miou, ii_miou):
    def metrics(a, miou):
        return {"miou": miou, "mean_f1": miou, "overall_accuracy": 0.9, "classes_in_mean": ["a"],
                "per_class": {"a": {"iou": a, "f1": a, "precision": a, "recall": a, "support": 1}}}
    return {"task_i": metrics(i_a, i_miou), "task_ii": metrics(ii_a, ii_miou), "pseudo_masks": None}


def test_aggregate_seeds_by_hand(tmp_path):
    comps = [comparison(0.5, 0.6, 0.5, 0.6), comparison(0.6, 0.6, 0.6, 0.6), comparison(None, 0.9, 0.7, 0.9)]
    agg = aggregate_seeds(comps)
    assert agg["num_seeds"] == 3 and agg["classes"] == ["a"]
    miou = agg["miou"]
    assert miou["task_i"]["mean"] == pytest.approx(0.6) and miou["task_i"]["std"] == pytest.approx(0.1)
    # task ii 0.6, 0.6, 0.9: deviations -0.1, -0.1, 0.2 → var 0.06 / 2
    assert miou["task_ii"]["mean"] == pytest.approx(0.7) and miou["task_ii"]["std"] == pytest.approx(math.sqrt(0.03))
    # paired differences 0.1, 0.0, 0.2
    assert miou["difference"]["mean"] == pytest.approx(0.1) and miou["difference"]["std"] == pytest.approx(0.1)
    assert agg["overall_accuracy"]["difference"]["mean"] == pytest.approx(0.0)
    # seed 3 has no IoU for a (null in its JSON): skipped, n = 2
    a = agg["per_class"]["a"]
    assert a["task_i"] == pytest.approx({"mean": 0.55, "std": math.sqrt(0.005), "n": 2})
    assert a["difference"]["n"] == 2 and a["difference"]["mean"] == pytest.approx(0.05)

    md = aggregate_markdown(agg)
    assert "| **mIoU** | 0.600 ± 0.100 | 0.700 ± 0.173 | +0.100 ± 0.100 |" in md
    written = write_seed_summary(tmp_path, agg, seeds=[0, 1, 2])
    saved = json.loads(written["seed_summary.json"].read_text())
    assert saved["seeds"] == [0, 1, 2] and saved["miou"]["task_i"]["n"] == 3
    assert "| **mIoU** | 0.600 ± 0.100" in written["seed_summary.md"].read_text()

    single = aggregate_seeds(comps[:1])
    assert math.isnan(single["miou"]["task_i"]["std"])  # one seed has no spread
    with pytest.raises(ValueError):
        aggregate_seeds([])


def test_json_is_atomic_and_nan_safe(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": float("nan"), "b": np.float32(0.5), "c": np.arange(3), "d": (1, float("inf"))})
    assert json.loads(path.read_text()) == {"a": None, "b": 0.5, "c": [0, 1, 2], "d": [1, None]}
    write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_colorize_palette_and_ignore():
    mask = np.array([[0, 3], [255, 1]], np.uint8)
    rgb = colorize(mask, PALETTE)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 1], (255, 0, 0))
    np.testing.assert_array_equal(rgb[1, 0], (0, 0, 0))
    with pytest.raises(ValueError, match="palette"):
        colorize(np.array([[7]], np.uint8), PALETTE)
