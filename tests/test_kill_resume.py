"""SIGKILL at awkward moments of a whole `--task all` chain, then `--resume`: the run ends exactly
as an uninterrupted one, and no checkpoint or pseudo mask is ever left half-written."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from wsseg.core.checkpoint import load_checkpoint
from wsseg.datasets.image_files import read_index_png

REPO = Path(__file__).resolve().parents[1]


def chain_config(tmp_path: Path) -> Path:
    """The smallest chain that still has every stage: task i, single-stage model, pseudo masks, task ii."""
    cfg = {
        "name": "kill",
        "data": {"kind": "synthetic_vaihingen", "root": str(tmp_path / "data"),
                 "options": {"num_tiles": 10, "tile_px": [96, 96], "seed": 3}},
        "split": {"n_labelled": 2, "n_tagged": 4, "n_val": 1},
        "model": {"name": "effnet_lite0_unet", "options": {"pretrained": False}},
        "train": {"epochs": 3, "iters_per_epoch": 6, "batch_size": 4, "crop_px": 64, "optimizer": "adamw",
                  "schedule": "poly", "workers": 0, "precision": "fp32"},
        "eval": {"window_px": 96, "stride_px": 64, "batch_size": 2, "num_triptychs": 1},
        "weak": {"tag_crop_px": 48,
                 "single_stage": {"backbone": "effnet_lite0", "width": 0.5, "epochs": 2, "iters_per_epoch": 4,
                                  "batch_size": 4, "crop_px": 48, "self_supervised_from_epoch": 2},
                 "pseudo": {"scales": [1.0]}},
    }
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(config: Path, out: Path, task: str = "all") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # one thread: same sums every run
    # Output to a file: a pipe nobody reads would block the run once full.
    log = open(config.parent / f"{out.name}.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "wsseg.cli", "train", "--task", task, "--config", str(config),
                                "--out", str(out), "--resume"], cwd=REPO, env=env, stdout=log, stderr=log)
    log.close()
    return process


def output_of(config: Path, out: Path) -> str:
    return (config.parent / f"{out.name}.log").read_text(errors="replace")[-3000:]


def wait_for(process: subprocess.Popen, condition, timeout: float = 300) -> bool:
    """Poll until `condition()` holds (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(0.002)
    raise TimeoutError("the run neither reached the moment nor ended")


def assert_nothing_half_written(run: Path) -> None:
    for checkpoint in run.rglob("*.pt"):
        load_checkpoint(checkpoint)  # raises on a truncated file
    for mask in run.glob("pseudo_masks/*.png"):
        read_index_png(mask)


def kill_moments(run: Path, rng: random.Random):
    """Conditions at which to kill, in the order the chain reaches them."""
    def writing(stage):
        return lambda: any((run / stage).glob(".last.pt.*.tmp"))

    def after(seconds):
        started = time.monotonic()
        return lambda: time.monotonic() - started > seconds

    def making_pseudo_masks():
        return any(run.glob("pseudo_masks/*.png")) and not (run / "pseudo_masks" / "done.json").exists()

    return [("task i checkpoint write", writing("task_i")),
            ("random moment", after(rng.uniform(0.5, 4.0))),
            ("single-stage checkpoint write", writing("single_stage")),
            ("pseudo-mask generation", making_pseudo_masks),
            ("task ii checkpoint write", writing("task_ii")),
            ("random moment", after(rng.uniform(0.5, 3.0)))]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("chain")
    config = chain_config(tmp_path)
    straight = start(config, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, output_of(config, tmp_path / "straight")
    return config, tmp_path / "straight"


def test_killed_and_resumed_chain_ends_as_an_uninterrupted_one(straight_run):
    config, straight = straight_run
    tmp_path = config.parent
    run = tmp_path / "killed"
    killed_at = []
    for name, moment in kill_moments(run, random.Random(0)):
        process = start(config, run)
        if wait_for(process, moment):
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed_at.append(name)
            assert_nothing_half_written(run)
        else:
            assert process.returncode == 0, output_of(config, run)
            break
    assert {"task i checkpoint write", "pseudo-mask generation"} <= set(killed_at), killed_at
    if not (run / "comparison.json").exists():
        final = start(config, run)
        assert final.wait(timeout=600) == 0, output_of(config, run)

    for stage in ("task_i", "single_stage", "task_ii"):
        a = load_checkpoint(straight / stage / "last.pt")["model"]
        b = load_checkpoint(run / stage / "last.pt")["model"]
        for key in a:
            assert torch.equal(a[key], b[key]), f"{stage}: {key}"
    for mask in (straight / "pseudo_masks").glob("*.png"):
        assert np.array_equal(read_index_png(mask), read_index_png(run / "pseudo_masks" / mask.name)), mask.name
    for stage in ("task_i", "task_ii"):
        a = json.loads((straight / stage / "metrics.json").read_text())
        b = json.loads((run / stage / "metrics.json").read_text())
        assert a["miou"] == b["miou"] and a["per_class"] == b["per_class"], stage


def test_sigterm_saves_the_step_reached_and_prints_the_resume_command(straight_run):
    config, straight = straight_run
    run = config.parent / "terminated"
    process = start(config, run)
    assert wait_for(process, lambda: (run / "task_i" / "last.pt").exists()), output_of(config, run)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM, output_of(config, run)
    said = output_of(config, run)
    assert "interrupted by SIGTERM" in said and "Traceback" not in said
    resume = said.split("To continue where it stopped:")[1].strip().splitlines()[0]
    assert resume.endswith(f"--out {run} --resume") and "--task all" in resume
    state = load_checkpoint(run / "task_i" / "last.pt")
    assert state["partial_epoch"] is not None or state["epoch"] >= 1

    assert start(config, run, task="i").wait(timeout=300) == 0, output_of(config, run)
    a = load_checkpoint(straight / "task_i" / "last.pt")["model"]
    b = load_checkpoint(run / "task_i" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
