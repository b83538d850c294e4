"""The independent task-i baseline (benchmarks/baseline_finetune.py) keeps running on wsseg's data."""

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baseline_finetune import main  # noqa: E402


def test_baseline_trains_and_reports_per_seed(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"kind": "synthetic_vaihingen", "root": str(tmp_path / "data"),
                 "options": {"num_tiles": 10, "tile_px": [96, 96], "seed": 2}},
        "split": {"n_labelled": 2, "n_tagged": 4, "n_val": 1},
        "eval": {"window_px": 96, "stride_px": 96}}))
    out = tmp_path / "baseline.json"
    assert main(["--config", str(config), "--split-seeds", "0,1", "--steps", "2", "--crop", "64", "--batch", "2",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [run["seed"] for run in report["runs"]] == [0, 1]
    assert report["runs"][0]["labelled"] != report["runs"][1]["labelled"]
    assert all(0.0 <= run["miou"] <= 1.0 and run["train_seconds"] > 0 for run in report["runs"])
    assert report["steps"] == 2 and report["miou_std"] is not None and "cpu" in report["machine"]
