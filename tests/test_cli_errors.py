"""Bad input through the command line: one clear line naming the file or key, nothing written over."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from wsseg.cli import main
from wsseg.datasets.synthetic_aerial import generate_synthetic_vaihingen


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaihingen")
    generate_synthetic_vaihingen(root, num_tiles=14, tile_px=(64, 64), seed=3)
    return root


@pytest.fixture
def dataset(pristine, tmp_path):
    root = tmp_path / "vaihingen"
    shutil.copytree(pristine, root)
    return root


def config_for(tmp_path: Path, root: Path, **extra) -> Path:
    cfg = {"data": {"kind": "vaihingen", "root": str(root)},
           "split": {"n_labelled": 3, "n_tagged": 6, "n_val": 2},
           "model": {"name": "unet", "options": {"base_channels": 4}},
           "train": {"epochs": 1, "iters_per_epoch": 1, "batch_size": 2, "crop_px": 32, "workers": 0},
           "eval": {"window_px": 64, "stride_px": 64}, **extra}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(config: Path, out: Path, capsys, *extra) -> tuple[int, str]:
    code = main(["train", "--config", str(config), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code: int, err: str, *needles: str):
    assert code != 0
    assert "Traceback" not in err
    # Progress bars may share stderr; the error itself is one line.
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def gt_path(root: Path, n: int) -> Path:
    return root / "gts_for_participants" / f"top_mosaic_09cm_area{n}.tif"


def test_missing_data_folder(tmp_path, capsys):
    code, err = run_cli(config_for(tmp_path, tmp_path / "nowhere"), tmp_path / "run", capsys)
    assert_one_line_error(code, err, "nowhere")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_image_without_mask(dataset, tmp_path, capsys):
    gt_path(dataset, 5).unlink()
    code, err = run_cli(config_for(tmp_path, dataset), tmp_path / "run", capsys)
    assert_one_line_error(code, err, "top_mosaic_09cm_area5.tif")


def test_mask_of_another_size(dataset, tmp_path, capsys):
    tifffile.imwrite(gt_path(dataset, 7), np.full((60, 64, 3), 255, np.uint8))
    code, err = run_cli(config_for(tmp_path, dataset), tmp_path / "run", capsys)
    assert_one_line_error(code, err, "top_mosaic_09cm_area7.tif")


def test_unknown_colour(dataset, tmp_path, capsys):
    gt = tifffile.imread(gt_path(dataset, 2))
    gt[10, 20] = (12, 34, 56)
    tifffile.imwrite(gt_path(dataset, 2), gt)
    code, err = run_cli(config_for(tmp_path, dataset), tmp_path / "run", capsys)
    assert_one_line_error(code, err, "top_mosaic_09cm_area2.tif", "(12, 34, 56)")


def test_truncated_image(dataset, tmp_path, capsys):
    image = dataset / "top" / "top_mosaic_09cm_area3.tif"
    image.write_bytes(image.read_bytes()[:300])
    code, err = run_cli(config_for(tmp_path, dataset), tmp_path / "run", capsys)
    assert_one_line_error(code, err, "top_mosaic_09cm_area3.tif")


def test_unknown_config_key(dataset, tmp_path, capsys):
    config = config_for(tmp_path, dataset, trian={"epochs": 2})
    code, err = run_cli(config, tmp_path / "run", capsys)
    assert_one_line_error(code, err, "trian")
    code, err = run_cli(config_for(tmp_path, dataset), tmp_path / "run", capsys, "--set", "train.epoch=2")
    assert_one_line_error(code, err, "train.epoch")
    assert not (tmp_path / "run").exists()


def test_existing_run_is_never_overwritten(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: an earlier run\n")
    code, err = run_cli(config_for(tmp_path, dataset), run, capsys)
    assert_one_line_error(code, err, "--resume")
    assert (run / "config.yaml").read_text() == "name: an earlier run\n"


def test_weak_settings_are_checked_against_the_dataset_before_any_training(dataset, tmp_path, capsys):
    config = config_for(tmp_path, dataset, weak={"single_stage": {"constant_background": "sky"}})
    code, err = run_cli(config, tmp_path / "run", capsys, "--task", "all")
    assert_one_line_error(code, err, "weak.single_stage.constant_background", "'sky'", "clutter")
    assert not (tmp_path / "run" / "task_i").exists()
    # Task i alone has no weak stage: the same config trains.
    assert run_cli(config, tmp_path / "run_i", capsys, "--task", "i")[0] == 0


def test_a_class_weight_cap_below_the_floor_is_a_config_error(dataset, tmp_path, capsys):
    config = config_for(tmp_path, dataset)
    code, err = run_cli(config, tmp_path / "run", capsys, "--set", "train.class_weights=median",
                        "--set", "train.class_weight_cap=0.05")
    assert_one_line_error(code, err, "train.class_weight_cap 0.05", "0.1")
    assert not (tmp_path / "run" / "task_i").exists()


def test_class_weights_of_the_wrong_length_are_a_config_error(dataset, tmp_path, capsys):
    config = config_for(tmp_path, dataset)
    code, err = run_cli(config, tmp_path / "run", capsys, "--set", "train.class_weights=[1.0, 2.0]")
    assert_one_line_error(code, err, "train.class_weights", "2 values", "6 classes")


def test_check_data_exits_2_for_a_bad_option_and_1_for_bad_files(dataset, tmp_path, capsys):
    """README: 1 when check-data finds problems in the data, 2 for bad input (a config, an option)."""
    config = config_for(tmp_path, dataset)
    code = main(["check-data", "--config", str(config), "--set", "data.options.labels_dir=gts"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert_one_line_error(code, captured.err.strip(), "data.options", "['labels_dir']", "label_dir")
    code = main(["check-data", "--config", str(config), "--set", "split.n_labelled=-3"])
    assert_one_line_error(code, capsys.readouterr().err.strip(), "split.n_labelled must be a non-negative integer")
    assert code == 2
    gt_path(dataset, 5).unlink()
    code = main(["check-data", "--config", str(config)])
    out = capsys.readouterr().out
    assert code == 1 and "top_mosaic_09cm_area5.tif" in out and "; fix: " in out


def test_the_log_follows_stdout_when_a_caller_swaps_and_closes_it(capsys):
    """A log line written after the stdout the CLI started with is gone (a finished test's
    capture) lands in today's stdout, with no 'Logging error' traceback."""
    import io
    import logging
    import sys

    from wsseg.cli.session import _setup_logging

    first = io.StringIO()
    saved = sys.stdout
    sys.stdout = first
    try:
        _setup_logging()
    finally:
        sys.stdout = saved
    first.close()
    logging.getLogger("wsseg.test").info("after the swap")
    captured = capsys.readouterr()
    assert "after the swap" in captured.out and "Logging error" not in captured.err
