"""benchmarks/gpu_check.sh: its dry run takes every step of the GPU check on the CPU at toy sizes,
and its report holds each step's figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import main, slug

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def test_the_dry_run_takes_every_step_and_reports_each(tmp_path):
    results_before = set(RESULTS.iterdir())
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # --out a folder: the report is named after the device.
    report = json.loads((tmp_path / "gpu_dry-run-cpu.json").read_text())
    assert set(RESULTS.iterdir()) == results_before  # a dry run's figures are no GPU's

    assert report["dry_run"] is True and report["device"] == "cpu" and report["all_ok"] is True
    assert {"what", "peak_memory", "machine", "device_name", "total_s", "start_by_s"} <= set(report)
    steps = {case["step"]: case for case in report["cases"]}
    assert list(steps) == ["demo", "predict", "single_stage", "torchrun", "compile"]
    for name, step in steps.items():
        assert step["ok"] and step["seconds"] > 0 and "peak_gpu_memory_mib" in step, (name, step)

    miou = steps["demo"]["test_miou"]
    assert set(miou) == {"task_i", "semi", "task_ii"} and all(0 <= value <= 1 for value in miou.values()), miou
    assert "--config" in steps["demo"]["command"] and "train.precision=bf16" in steps["demo"]["command"]
    predict = steps["predict"]
    assert predict["raster_px"] == [256, 256] and predict["mpix_per_s"] > 0
    assert "scene_256_mask.tif" in predict["outputs"]
    single_stage = steps["single_stage"]
    assert set(single_stage["cases"]) == {"fp32", "bf16_channels_last", "fp16_channels_last"}
    assert [c["precision"] for c in single_stage["cases"].values()] == ["fp32", "bf16", "fp16"]
    assert single_stage["speedup_bf16_over_fp32"] > 0 and single_stage["speedup_fp16_over_fp32"] > 0
    runs = steps["compile"]["runs"]
    assert runs["compiled"]["compiled"] and not runs["eager"]["compiled"] and steps["compile"]["speedup_compiled"] > 0
    torchrun = steps["torchrun"]
    assert torchrun["backend"] == "gloo" and torchrun["world_size"] == 1 and torchrun["all_reduce_ok"]
    assert "--nproc_per_node 1" in torchrun["command"] and torchrun["step_s_best"] > 0


def test_a_step_that_cannot_run_is_reported_and_fails_the_check(tmp_path):
    # predict needs the demo's model: asked alone, it is skipped, saying why, and the check fails.
    assert main(["--dry-run", "--out", str(tmp_path / "report.json"), "--steps", "predict"]) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["all_ok"] is False
    [predict] = report["cases"]
    assert predict["step"] == "predict" and not predict["ok"] and "the demo did not finish" in predict["skipped"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_real_check_refuses_and_names_the_dry_run(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 2
    assert "--dry-run" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_report_names_are_slugs_of_the_device_name():
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slug("NVIDIA H200") == "nvidia-h200"
