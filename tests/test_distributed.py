"""Training under torchrun: two CPU processes (gloo) on a tiny task i, launched as a user would.

One torchrun launch (tests/distributed_worker.py) does everything that needs two processes, and
the tests read what each process reported: its sharded evaluation, its weights after each
stage, and the files it wrote.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import weights_hash
from test_run_training import tiny_config

from wsseg.cli import main
from wsseg.core.checkpoint import load_checkpoint
from wsseg.core.distributed import DistInfo
from wsseg.core.stage import Stage

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
                           str(processes), "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny task i trained by two processes, and what each process reported."""
    tmp = tmp_path_factory.mktemp("distributed")
    config = tiny_config(tmp, tmp / "data",
                         data={"options": {"num_tiles": 8, "tile_px": [96, 96], "seed": 1}},
                         split={"n_labelled": 2, "n_tagged": 1, "n_val": 2},
                         # A small U-Net, with BatchNorm: its running statistics differ between processes.
                         model={"name": "unet", "options": {"base_channels": 8, "depth": 2}},
                         train={"epochs": 2, "iters_per_epoch": 4, "batch_size": 2, "crop_px": 64,
                                "channels_last": False},
                         eval={"window_px": 96, "stride_px": 96})
    run_dir, reports = tmp / "two_processes", tmp / "reports"
    result = torchrun(str(ROOT / "tests" / "distributed_worker.py"), "--config", str(config), "--report-dir",
                      str(reports), "--new-run", str(run_dir))
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    rank_reports = [json.loads((reports / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [report["exit_codes"] for report in rank_reports] == [[0], [0]]
    return {"config": config, "run_dir": run_dir, "reports": rank_reports}


def test_the_processes_sum_to_the_one_process_confusion_matrices(runs):
    for report in runs["reports"]:
        evaluation = report["sharded_eval"]
        assert report["world_size"] == 2
        assert evaluation["cm"] == evaluation["cm_alone"]
        assert evaluation["cm_eroded"] == evaluation["cm_eroded_alone"]
        assert sum(map(sum, evaluation["cm"])) == 3 * 96 * 96  # every pixel of the three tiles, once
        assert sum(any(column) for column in zip(*evaluation["cm"])) > 1, "a model predicting one class proves little"
        assert all(evaluation["predictions_equal"].values()), evaluation["predictions_equal"]
    # Each process predicted its own share of the three tiles, not all of them.
    assert [r["sharded_eval"]["tiles_predicted"] for r in runs["reports"]] == [2, 1]


def test_both_processes_end_with_the_weights_rank_0_saved(runs):
    rank0, rank1 = (report["weights"] for report in runs["reports"])
    assert [w["stage"] for w in rank0] == [w["stage"] for w in rank1]
    assert len(rank0) == 1  # task i's one fit
    assert rank0 == rank1
    assert rank0[0]["hash"] == weights_hash(load_checkpoint(runs["run_dir"] / "task_i" / "last.pt")["model"])


def test_only_rank_0_writes_files(runs):
    rank0, rank1 = (set(report["written"]) for report in runs["reports"])
    assert rank1 == set()
    run_dir = runs["run_dir"].resolve()
    for name in ("log.txt", "config.yaml", "split.json", "task_i/last.pt", "task_i/best.pt", "task_i/done.json",
                 "task_i/metrics.json", "task_i/report.md"):
        assert str(run_dir / name) in rank0, name


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    run_dir = tmp_path / "two_processes"  # a copy: the other tests read the original
    shutil.copytree(runs["run_dir"], run_dir)
    (run_dir / "task_i" / "done.json").unlink()  # as if the two processes had stopped after epoch 2
    assert main(["train", "--task", "i", "--config", str(runs["config"]), "--out", str(run_dir), "--resume",
                 "--set", "train.epochs=3"]) == 0
    state = load_checkpoint(run_dir / "task_i" / "last.pt")
    assert state["epoch"] == 2 and [row["epoch"] for row in state["history"]] == [1, 2, 3]
    # Poly ends at 0 only if the schedule continued from epoch 2 in one process's steps.
    assert state["history"][-1]["lr"] == 0.0
    assert "another number of processes" in (run_dir / "log.txt").read_text()
    assert (run_dir / "task_i" / "done.json").is_file()


def test_sync_bn_on_cpu_is_a_clear_error(tmp_path):
    # The check comes before any process group is needed, so one process can pose as rank 0 of 2.
    stage = Stage(tmp_path, device="cpu", dist=DistInfo(rank=0, world_size=2), sync_bn=True)
    with pytest.raises(ValueError, match="train.sync_bn needs CUDA"):
        stage.prepare(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)))


def test_sync_bn_weights_load_into_the_plain_model():
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(plain)
    assert isinstance(synced[1], torch.nn.SyncBatchNorm)
    torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).load_state_dict(synced.state_dict())


def test_sync_bn_keeps_the_activation_inside_timms_batch_norms():
    """timm's BatchNormAct2d (EfficientNet, MobileNetV3) applies its activation inside: torch's
    converter would turn it into a plain SyncBatchNorm and drop the activation without a word."""
    from timm.layers import BatchNormAct2d
    from timm.layers.norm_act import SyncBatchNormAct

    from wsseg.core.stage import sync_batch_norms
    from wsseg.models import build_segmenter

    model = build_segmenter("timm_unet", 3, encoder="test_efficientnet", pretrained=False)
    keys = list(model.state_dict())
    acts = [type(m.act) for m in model.modules() if isinstance(m, BatchNormAct2d)]
    synced = sync_batch_norms(model)
    assert acts and [type(m.act) for m in synced.modules() if isinstance(m, SyncBatchNormAct)] == acts
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())  # the decoder's too
    assert list(synced.state_dict()) == keys
