"""End to end through the command line: tiny task i and task ii runs on the synthetic aerial data."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from wsseg.cli import main
from wsseg.core.checkpoint import load_checkpoint

REPORT_FILES = ["metrics.json", "report.md", "iou_bars.png", "confusion.png", "curves.png", "best.pt", "last.pt"]


def tiny_config(tmp_path: Path, data_root: Path, **sections) -> Path:
    """A config small enough for a few seconds per stage on 2 CPU cores."""
    cfg = {
        "name": "tiny",
        "data": {"kind": "synthetic_vaihingen", "root": str(data_root),
                 "options": {"num_tiles": 14, "tile_px": [160, 160], "seed": 1}},
        "split": {"n_labelled": 3, "n_tagged": 6, "n_val": 2},
        "model": {"name": "effnet_lite0_unet", "options": {"pretrained": True}},
        "train": {"epochs": 3, "iters_per_epoch": 15, "batch_size": 8, "crop_px": 96, "optimizer": "adamw",
                  "lr": 2e-3, "schedule": "poly", "workers": 0, "channels_last": True,
                  # fp32, not auto: the same numbers on every machine (auto has tests of its own).
                  "precision": "fp32"},
        "eval": {"window_px": 160, "stride_px": 96, "batch_size": 4, "num_triptychs": 1},
        "weak": {"tag_crop_px": 80,
                 "single_stage": {"backbone": "effnet_lite0", "pretrained": "imagenet", "epochs": 2,
                                  "iters_per_epoch": 6, "batch_size": 4, "crop_px": 80,
                                  "self_supervised_from_epoch": 2},
                 "pseudo": {"scales": [1.0]}},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def image_tags(event_file: Path) -> set[str]:
    """Tags of the images in a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    data, offset, tags = event_file.read_bytes(), 0, set()
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        tags |= {value.tag for value in event.summary.value if value.HasField("image")}
        offset += 12 + length + 4
    return tags


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def task_i_run(tmp_path_factory, data_root):
    tmp = tmp_path_factory.mktemp("task_i")
    config = tiny_config(tmp, data_root)
    assert main(["train", "--task", "i", "--config", str(config), "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def test_task_i_learns_and_writes_every_report_file(task_i_run):
    stage = task_i_run / "task_i"
    for name in REPORT_FILES:
        assert (stage / name).is_file(), name
    assert list(stage.glob("triptych_*.png"))
    events = list((stage / "tb").iterdir())
    assert events, "no tensorboard events"
    assert any(tag.startswith("task_i/val_") for tag in image_tags(events[0]))
    for name in ("config.yaml", "split.json", "log.txt", "run_info.json"):
        assert (task_i_run / name).is_file(), name
    metrics = json.loads((stage / "metrics.json").read_text())
    assert set(metrics) >= {"miou", "mean_f1", "overall_accuracy", "per_class", "classes_in_mean", "eroded",
                            "baseline_majority_miou"}
    assert "clutter" not in metrics["classes_in_mean"] and len(metrics["classes_in_mean"]) == 5
    assert set(metrics["per_class"]["building"]) >= {"iou", "f1"}
    assert 0.0 <= metrics["baseline_majority_miou"] < 0.15
    assert metrics["checkpoint"]["epochs_trained"] == 3  # no time budget: all of train.epochs
    # Three labelled 160 px tiles and 45 steps: far from converged, clearly better than a constant.
    assert metrics["miou"] > metrics["baseline_majority_miou"] + 0.1, metrics["miou"]
    split = json.loads((task_i_run / "split.json").read_text())
    assert len(split["labelled"]) == 3 and len(split["test"]) == 3
    assert not set(split["val"]) & set(split["test"])


def test_eval_command_reproduces_the_test_metrics(task_i_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(task_i_run / "task_i" / "best.pt"), "--out", str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    first = json.loads((task_i_run / "task_i" / "metrics.json").read_text())
    assert again["miou"] == pytest.approx(first["miou"], abs=1e-6)
    assert "mIoU" in capsys.readouterr().out


def test_resumed_run_gives_the_same_weights(tmp_path, data_root):
    overrides = ["--set", "train.schedule=constant", "--set", "train.iters_per_epoch=4",
                 "--set", "model.options.pretrained=false", "--set", "split.n_val=0"]
    config = tiny_config(tmp_path, data_root)
    straight, split_run = tmp_path / "straight", tmp_path / "interrupted"
    assert main(["train", "--config", str(config), "--out", str(straight), "--set", "train.epochs=2", *overrides]) == 0
    # Interrupted after one epoch, then continued to two.
    assert main(["train", "--config", str(config), "--out", str(split_run), "--set", "train.epochs=1", *overrides]) == 0
    (split_run / "task_i" / "done.json").unlink()
    assert main(["train", "--config", str(config), "--out", str(split_run), "--resume", "--set", "train.epochs=2",
                 *overrides]) == 0
    # The interrupted run's first start is kept; the resume is appended, not written over it.
    straight_info, split_info = (json.loads((run / "run_info.json").read_text()) for run in (straight, split_run))
    assert straight_info["resumed"] == [] and split_info["resume"] is False
    assert len(split_info["resumed"]) == 1 and split_info["resumed"][0]["resume"] is True
    assert split_info["started"] <= split_info["resumed"][0]["started"]
    a = load_checkpoint(straight / "task_i" / "last.pt")["model"]
    b = load_checkpoint(split_run / "task_i" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_same_seed_gives_the_same_run_to_the_last_bit(tmp_path, monkeypatch, capfd):
    """Two task i runs of one config on the CPU, deterministic kernels on: the same split, weights,
    history and test metrics; another train.seed gives other weights on the same split. Models of
    a few thousand weights on 64 px tiles, so each run takes a second or two."""
    from wsseg.core import report

    monkeypatch.delenv("WSSEG_PROGRESS", raising=False)
    # The report's figures take most of a tiny run's time and are not what this test is about.
    for figure in ("plot_class_bars", "plot_confusion", "plot_curves"):
        monkeypatch.setattr(report, figure, lambda path, *args, **kwargs: path)
    config = tiny_config(
        tmp_path, tmp_path / "data", data={"options": {"num_tiles": 8, "tile_px": [64, 64], "seed": 3}},
        split={"n_labelled": 2, "n_tagged": 2, "n_val": 1},
        model={"name": "unet", "options": {"base_channels": 4, "depth": 2}},
        train={"epochs": 2, "iters_per_epoch": 2, "batch_size": 4, "crop_px": 32, "workers": 0, "precision": "fp32",
               "channels_last": False, "deterministic": True},
        eval={"window_px": 64, "stride_px": 64, "batch_size": 2, "num_triptychs": 0})

    def run(name: str, *overrides: str) -> tuple[dict, dict, list, dict]:
        assert main(["train", "--config", str(config), "--out", str(tmp_path / name), *overrides]) == 0
        state = load_checkpoint(tmp_path / name / "task_i" / "last.pt")
        history = [{k: v for k, v in row.items() if k != "seconds"} for row in state["history"]]
        return (state["model"], json.loads((tmp_path / name / "task_i" / "metrics.json").read_text()), history,
                json.loads((tmp_path / name / "split.json").read_text()))

    try:
        first, again = run("first"), run("again")
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        other_seed = run("other_seed", "--set", "train.seed=1", "--set", "train.deterministic=false")
        # A run that does not ask for deterministic kernels switches off what the one before left on.
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    assert first[0].keys() == again[0].keys()
    for key in first[0]:
        assert torch.equal(first[0][key], again[0][key]), key
    assert first[1:] == again[1:]  # metrics, history, split
    assert other_seed[3] == first[3]  # train.seed leaves the split to split.seed
    assert any(not torch.equal(first[0][k], other_seed[0][k]) for k in first[0] if first[0][k].is_floating_point())
    # Run under pytest, stderr is a file: no progress bar redrew itself into it.
    assert "\r" not in capfd.readouterr().err


def test_rerun_without_resume_keeps_the_existing_run(task_i_run, capsys, tmp_path):
    config = task_i_run / "config.yaml"
    before = (task_i_run / "task_i" / "best.pt").read_bytes()
    (task_i_run / "task_i" / "done.json").rename(task_i_run / "task_i" / "done.json.bak")
    try:
        assert main(["train", "--config", str(config), "--out", str(task_i_run)]) == 2
    finally:
        (task_i_run / "task_i" / "done.json.bak").rename(task_i_run / "task_i" / "done.json")
    assert "pass --resume" in capsys.readouterr().err
    assert (task_i_run / "task_i" / "best.pt").read_bytes() == before


def test_a_rejected_constant_background_is_retrained_learned(tmp_path, data_root, monkeypatch):
    import wsseg.pipeline.pseudo_masks as pseudo_masks

    def never_wins(layout, classes, weak_cm, calibration):
        if layout.background_index is not None:
            raise pseudo_masks.BackgroundRejected(classes.names[layout.background_index], 0.0, 0.05, calibration)

    monkeypatch.setattr(pseudo_masks, "_check_background", never_wins)
    config = tiny_config(tmp_path, data_root)
    run = tmp_path / "run"
    assert main(["train", "--task", "ii", "--config", str(config), "--out", str(run),
                 "--set", "train.epochs=1", "--set", "weak.pseudo.crf=false"]) == 0
    assert "retraining it with every class learned" in (run / "log.txt").read_text()
    note = json.loads((run / "single_stage" / "background_rejected.json").read_text())
    assert note["class"] == "clutter" and note["recall"] == 0.0
    quality = json.loads((run / "pseudo_masks" / "pseudo_quality.json").read_text())
    assert quality["single_stage_background"] == "learned" and quality["background_rejected"] == note
    assert (run / "single_stage_learned" / "done.json").is_file()
    learned = load_checkpoint(run / "single_stage_learned" / "last.pt")["model"]
    constant = load_checkpoint(run / "single_stage" / "last.pt")["model"]
    # The learned layout has one scored channel more: every class, clutter included.
    head = next(k for k in learned if learned[k].ndim == 4 and learned[k].shape[0] in (5, 6) and k in constant
                and constant[k].shape != learned[k].shape)
    assert learned[head].shape[0] == constant[head].shape[0] + 1


def test_task_all_runs_the_weak_chain_and_compares(tmp_path, data_root, monkeypatch):
    import wsseg.pipeline.pseudo_masks as pseudo_masks

    # The tiny single-stage model never finds clutter, its constant channel: keep it (the
    # rejection has its own test).
    monkeypatch.setattr(pseudo_masks, "REJECT_BACKGROUND_BELOW_RECALL", 0.0)
    config = tiny_config(tmp_path, data_root)
    run = tmp_path / "run"
    chain = ["--set", "weak.pseudo.segmenter_weight=0.5",
             "--set", "weak.pseudo.crf=auto", "--set", "weak.pseudo.use_pamr=auto",
             # What is checked here is the chain, not how well it learns: fewer steps per stage.
             "--set", "train.iters_per_epoch=6"]
    # Task ii alone: it needs task i's segmenter, so task i runs first.
    assert main(["train", "--task", "ii", "--config", str(config), "--out", str(run), *chain]) == 0
    log_text = (run / "log.txt").read_text()
    assert "running task i first" in log_text
    assert (run / "task_i" / "done.json").is_file()
    # A finished chain is not redone: `--task all --resume` only writes the comparison.
    mtimes = {name: (run / name).stat().st_mtime_ns for name in ("task_i/best.pt", "task_ii/best.pt",
                                                                  "pseudo_masks/pseudo_quality.json")}
    assert main(["train", "--task", "all", "--config", str(config), "--out", str(run), "--resume", *chain]) == 0
    assert {name: (run / name).stat().st_mtime_ns for name in mtimes} == mtimes
    for name in ("crop_tags.json", "comparison.json", "comparison.md", "comparison_iou.png",
                 "single_stage/last.pt", "pseudo_masks/pseudo_quality.json", "task_ii/metrics.json"):
        assert (run / name).is_file(), name
    comparison = json.loads((run / "comparison.json").read_text())
    # `all` adds the tag-free arm to the finished tasks i and ii, at task i's epochs.
    assert set(comparison) == {"task_i", "semi", "task_ii", "pseudo_masks", "tags_bought"}
    assert comparison["semi"] == json.loads((run / "semi" / "done.json").read_text())
    assert comparison["tags_bought"]["miou"] == pytest.approx(comparison["task_ii"]["miou"] - comparison["semi"]["miou"])
    report = (run / "comparison.md").read_text()
    assert "What the tags bought (task ii − semi" in report and "## Minutes per arm" in report
    assert "| semi |" in report and "weak stage (single-stage model, pseudo masks)" in report
    quality = comparison["pseudo_masks"]
    assert set(quality) >= {"coverage", "miou_raw", "miou_crf", "miou_final", "per_class"}
    assert 0.0 < quality["coverage"] <= 1.0
    assert isinstance(quality["weak_abstains"], list) and isinstance(quality["classes_never_labelled"], list)
    assert set(quality["calibration_precision"]) == {"impervious_surfaces", "building", "low_vegetation", "tree",
                                                     "car", "clutter"}
    # crf: auto decides on the calibration tiles, and says what it measured.
    measured = quality["crf_calibration"]
    assert quality["crf"] == (measured["miou_with_crf"] > measured["miou_without_crf"])
    measured = quality["pamr_calibration"]  # and so does use_pamr: auto
    assert quality["pamr"] == (measured["miou_with_pamr"] > measured["miou_without_pamr"])
    assert quality["single_stage_background"] == "constant" and "background_rejected" not in quality
    split = json.loads((run / "split.json").read_text())
    # Task i's segmenter learned the N1 tiles, so the pseudo masks are calibrated on the val tiles.
    assert quality["segmenter_weight"] == 0.5 and quality["calibration_tiles"] == split["val"]
    from wsseg.datasets.image_files import read_index_png

    for tile in split["tagged"]:
        mask = read_index_png(run / "pseudo_masks" / f"{tile}.png")
        assert mask.shape == (160, 160)
        assert set(np.unique(mask)) <= set(range(6)) | {255}
    assert not (run / "pseudo_masks" / f"{split['val'][0]}.png").exists()
    # The self-supervised loss reports the share of crops it learned from.
    history = load_checkpoint(run / "single_stage" / "last.pt")["history"]
    assert 0.0 <= history[-1]["train_self_crops_used"] <= 1.0

    # The oracle arm, added to the finished chain: only the oracle trains, and the comparison
    # gains the oracle and the gap closed.
    assert main(["train", "--task", "all", "--config", str(config), "--out", str(run), "--resume", "--oracle",
                 *chain]) == 0
    assert {name: (run / name).stat().st_mtime_ns for name in mtimes} == mtimes
    comparison = json.loads((run / "comparison.json").read_text())
    assert set(comparison) == {"task_i", "semi", "task_ii", "pseudo_masks", "tags_bought", "oracle", "gap_closed"}
    assert comparison["oracle"] == json.loads((run / "oracle" / "done.json").read_text())
    i, ii, oracle = (comparison[k]["miou"] for k in ("task_i", "task_ii", "oracle"))
    gap = comparison["gap_closed"]["miou"]
    assert gap is None if oracle <= i else gap == pytest.approx((ii - i) / (oracle - i))
    assert "## Against the oracle" in (run / "comparison.md").read_text()


def test_segmenter_weight_out_of_range_is_a_config_error(tmp_path, data_root, capsys):
    config = tiny_config(tmp_path, data_root)
    assert main(["train", "--task", "ii", "--config", str(config), "--out", str(tmp_path / "run"),
                 "--set", "weak.pseudo.segmenter_weight=1.5"]) != 0
    assert "weak.pseudo.segmenter_weight" in capsys.readouterr().err


def test_split_seeds_report_mean_and_std(tmp_path, data_root):
    config = tiny_config(tmp_path, data_root, train={"epochs": 1, "iters_per_epoch": 6},
                         weak={"single_stage": {"backbone": "effnet_lite0", "pretrained": "imagenet", "epochs": 1,
                                                "iters_per_epoch": 3, "batch_size": 4, "crop_px": 80,
                                                "self_supervised_from_epoch": 1, "constant_background": None}})
    run = tmp_path / "seeds"
    assert main(["train", "--task", "all", "--config", str(config), "--out", str(run), "--split-seeds", "0,1"]) == 0
    splits = [json.loads((run / f"split_seed_{s}" / "split.json").read_text()) for s in (0, 1)]
    assert splits[0]["labelled"] != splits[1]["labelled"]
    summary = json.loads((run / "seed_summary.json").read_text())
    per_seed = [json.loads((run / f"split_seed_{s}" / "comparison.json").read_text())["task_i"]["miou"] for s in (0, 1)]
    assert summary["num_seeds"] == 2
    assert summary["miou"]["task_i"]["mean"] == pytest.approx(np.mean(per_seed))
    assert summary["miou"]["task_i"]["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert (run / "seed_summary.md").is_file()


def test_task_ii_online_learns_the_n2_crops_under_their_tags(tmp_path):
    """`weak.mode: online` end to end on 64 px tiles with models of a few thousand weights: task ii
    trains as the semi arm does, with the crop tags handed on; no single-stage model, no pseudo
    masks, and the comparison report has all three arms."""
    config = tiny_config(tmp_path, tmp_path / "data",
                         data={"options": {"num_tiles": 14, "tile_px": [64, 64], "seed": 3}},
                         split={"n_labelled": 3, "n_tagged": 6, "n_val": 1},
                         model={"name": "unet", "options": {"base_channels": 4, "depth": 2}},
                         train={"epochs": 2, "iters_per_epoch": 3, "batch_size": 4, "crop_px": 32, "workers": 0,
                                "precision": "fp32"},
                         eval={"window_px": 64, "stride_px": 64, "num_triptychs": 1},
                         weak={"tag_crop_px": 16, "mode": "online"}, semi={"threshold": 0.3})
    run = tmp_path / "run"
    assert main(["train", "--task", "all", "--config", str(config), "--out", str(run)]) == 0
    assert not (run / "single_stage").exists() and not (run / "pseudo_masks").exists()
    last = load_checkpoint(run / "task_ii" / "last.pt")
    assert [row["epoch"] for row in last["history"]] == [1, 2]
    assert all(0.0 < row["train_confident_pixels"] <= 1.0 for row in last["history"])
    assert "teacher" in last["companions"]
    comparison = json.loads((run / "comparison.json").read_text())
    assert comparison["pseudo_masks"] is None
    assert {"task_i", "semi", "task_ii"} <= set(comparison)
    assert "Task ii: N1 pixel labels + N2 images under their crop tags (online)" in (run / "task_ii" / "report.md").read_text()


def test_task_ii_with_image_level_tags(tmp_path, capsys, monkeypatch):
    """`weak.tags: image` through the command line, on non-square tiles: one whole-image tag per
    tile, and pseudo masks of the tiles' own size. Models of a few thousand weights, a step or two."""
    config = tiny_config(
        tmp_path, tmp_path / "data",
        data={"options": {"num_tiles": 8, "tile_px": [64, 96], "seed": 3}},
        split={"n_labelled": 2, "n_tagged": 3, "n_val": 1},
        model={"name": "unet", "options": {"base_channels": 4, "depth": 2}},
        train={"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "crop_px": 32, "optimizer": "adam",
               "schedule": "constant", "workers": 0, "precision": "fp32", "channels_last": False},
        eval={"window_px": 64, "stride_px": 64, "batch_size": 2, "num_triptychs": 1},
        weak={"single_stage": {"backbone": "resnet38", "width": 0.0625, "epochs": 1, "iters_per_epoch": 2,
                               "batch_size": 2, "crop_px": 48, "self_supervised_from_epoch": 2},
              "pseudo": {"scales": [1.0], "use_pamr": False, "crf": False}})
    monkeypatch.setattr("wsseg.pipeline.pseudo_masks.REJECT_BACKGROUND_BELOW_RECALL", 0.0)
    run = tmp_path / "run"
    assert main(["train", "--task", "ii", "--config", str(config), "--out", str(run), "--set", "weak.tags=image"]) == 0
    tags = json.loads((run / "crop_tags.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert tags["mode"] == "image" and set(tags["tiles"]) == {*split["labelled"], *split["tagged"]}
    assert all(len(crops) == 1 and crops[0][:4] == [0, 0, 64, 96] for crops in tags["tiles"].values())
    from wsseg.datasets.image_files import read_index_png

    for tile in split["tagged"]:
        assert read_index_png(run / "pseudo_masks" / f"{tile}.png").shape == (64, 96)
    assert (run / "task_ii" / "metrics.json").is_file()
    # Resumed in the other mode: the tags on disk say which mode they were made in.
    capsys.readouterr()
    assert main(["train", "--task", "ii", "--config", str(config), "--out", str(run), "--resume"]) != 0
    assert "made with weak.tags: image, but this run has weak.tags: grid" in capsys.readouterr().err


def test_two_runs_of_one_config_with_auto_precision_give_the_same_comparison(tmp_path, monkeypatch):
    """`--task all` twice on one machine, `precision: auto` on a CPU with bf16 instructions whose
    timings differ from run to run (bf16 1.14× faster, then 1.03×): the machine's first decision
    holds for the second run, and comparison.json is the same but for the minutes."""
    from wsseg.core import precision

    monkeypatch.setenv("WSSEG_CACHE", str(tmp_path / "machine"))
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    timings = iter([{"fp32": [1.14] * 5, "bf16": [1.0] * 5}, {"fp32": [1.03] * 5, "bf16": [1.0] * 5}] * 20)
    monkeypatch.setattr(precision, "_measure", lambda *args, **kwargs: next(timings))
    config = tiny_config(
        tmp_path, tmp_path / "data", data={"options": {"num_tiles": 8, "tile_px": [64, 64], "seed": 3}},
        split={"n_labelled": 2, "n_tagged": 3, "n_val": 1},
        model={"name": "unet", "options": {"base_channels": 4, "depth": 2}},
        train={"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "crop_px": 32, "workers": 0, "precision": "auto",
               "channels_last": False, "deterministic": True},
        eval={"window_px": 64, "stride_px": 64, "batch_size": 2, "num_triptychs": 0},
        weak={"tag_crop_px": 32,
              "single_stage": {"backbone": "resnet38", "width": 0.0625, "epochs": 1, "iters_per_epoch": 2,
                               "batch_size": 2, "crop_px": 32, "self_supervised_from_epoch": 2},
              "pseudo": {"scales": [1.0], "use_pamr": False, "crf": False}})
    monkeypatch.setattr("wsseg.pipeline.pseudo_masks.REJECT_BACKGROUND_BELOW_RECALL", 0.0)

    def without_minutes(value):
        if isinstance(value, dict):
            return {k: without_minutes(v) for k, v in value.items() if k not in ("minutes", "seconds")}
        if isinstance(value, list):
            return [without_minutes(v) for v in value]
        return value

    try:
        comparisons = []
        for name in ("first", "second"):
            assert main(["train", "--task", "all", "--config", str(config), "--out", str(tmp_path / name)]) == 0
            comparisons.append(without_minutes(json.loads((tmp_path / name / "comparison.json").read_text())))
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    assert comparisons[0] == comparisons[1]
    first, second = (json.loads((tmp_path / name / "precision.json").read_text()) for name in ("first", "second"))
    # The first run timed each model (and chose by its timing); the second took every decision
    # from the machine's file, although its own timings would have chosen fp32 throughout.
    assert first.keys() == second.keys() and {d["source"] for d in first.values()} == {"measured"}
    assert {d["choice"] for d in first.values()} >= {"bf16"}
    for key, decision in second.items():
        assert decision["source"] == str(tmp_path / "machine" / "precision.json")
        assert decision["choice"] == first[key]["choice"], key
