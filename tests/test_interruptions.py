"""Faults injected into training: Ctrl-C / SIGTERM, a full disk, a non-finite loss, a folder in use."""

import errno
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from wsseg.core.checkpoint import CheckpointError, load_checkpoint
from wsseg.core.epoch import NonFiniteLoss
from wsseg.core.interruptions import TrainingInterrupted
from wsseg.core.loaders import training_loader
from wsseg.core.losses import weighted_cross_entropy
from wsseg.core.optim import build_optimizer, build_scheduler
from wsseg.core.run_lock import LOCK_NAME, RunFolderInUse, RunLock
from wsseg.core.train import fit

REPO = Path(__file__).resolve().parents[1]


class NoisyTiles(Dataset):
    """Random images whose label is the brightest channel, drawn from the global RNG (as
    augmentations are), each sample brighter in one channel after its index (so that the data
    order matters) and named after a tile."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        image = torch.rand(3, 8, 8)
        image[index % 3] += 0.2 * (index % 5)
        return image, image.argmax(0)

    def tile_id_of(self, index):
        return f"tile_{index:02d}"


def tiny_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.3), nn.Conv2d(8, 3, 1))


def train(run_dir, epochs=3, resume=False, workers=0, on_step=None, on_nonfinite="stop", poison=()):
    """A short fit; `on_step(global_step)` runs inside each step, `poison` holds the global steps
    whose loss is NaN."""
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = build_optimizer(model.parameters(), "adam", 1e-2)
    loader = training_loader(NoisyTiles(), 3, num_workers=workers, drop_last=False)
    scheduler = build_scheduler(optimizer, "poly", epochs * len(loader))
    step = {"n": 0}
    messages = []

    def compute_loss(model, batch, epoch):
        step["n"] += 1
        if on_step is not None:
            on_step(step["n"])
        loss = weighted_cross_entropy(model(batch[0]), batch[1])
        if step["n"] in poison:
            return loss * float("nan"), {"tag": float("nan"), "seg": 1.0}
        return loss, {"seg": loss.item()}

    history = fit(model=model, loader=loader, optimizer=optimizer, scheduler=scheduler, compute_loss=compute_loss,
                  epochs=epochs, run_dir=run_dir, device=torch.device("cpu"), resume=resume,
                  validate=lambda model, epoch: {"miou": 0.1 * epoch}, log=messages.append, show_progress=False,
                  on_nonfinite=on_nonfinite)
    return model, history, messages


def assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_at_the_step_boundary_and_resume_continues_exactly(tmp_path, sig, workers):
    straight, straight_history, _ = train(tmp_path / "straight", workers=workers)

    def signal_at_step_6(n):  # epoch 2 of 3, step 2 of 4
        if n == 6:
            os.kill(os.getpid(), sig)

    sigint_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(tmp_path / "run", on_step=signal_at_step_6, workers=workers)
    assert stopped.value.signal_name == signal.Signals(sig).name
    assert "epoch 2, after step 2 of 4" in str(stopped.value)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 0 and state["partial_epoch"]["steps_done"] == 2 and state["global_step"] == 6
    # The handlers are the previous ones again: a later Ctrl-C is what it was before (an ordinary
    # KeyboardInterrupt in a terminal; ignored in a background job, which starts with SIGINT ignored).
    assert signal.getsignal(signal.SIGINT) is sigint_before

    resumed, history, messages = train(tmp_path / "run", resume=True, workers=workers)
    assert any("in epoch 2, after step 2" in m for m in messages)
    assert_same_weights(straight, resumed)
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in straight_history]


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    saved = torch.save

    def fill_the_disk_in_epoch_2(obj, path, *args, **kwargs):
        if obj["epoch"] == 1:
            with open(path, "wb") as partial:
                partial.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saved(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fill_the_disk_in_epoch_2)
    with pytest.raises(CheckpointError, match=r"last.pt: No space left on device; the previous last.pt is intact"):
        train(tmp_path)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary file left


def test_a_nonfinite_loss_stops_naming_step_term_and_tiles(tmp_path):
    with pytest.raises(NonFiniteLoss) as stopped:
        train(tmp_path, poison={6})
    message = str(stopped.value)
    assert "epoch 2, step 2 of 4 (global step 6)" in message
    assert "non-finite terms: tag" in message and "seg" not in message.split("terms:")[1].split(";")[0]
    assert "batch tiles: tile_" in message and "train.on_nonfinite=skip" in message
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0


def test_skip_leaves_the_weights_untouched_and_counts_the_step(tmp_path):
    model, history, messages = train(tmp_path, poison={6, 7}, on_nonfinite="skip")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [h.get("skipped_nonfinite_steps", 0) for h in history] == [0, 2, 0]
    assert sum("step skipped" in m for m in messages) == 2
    assert any("2 non-finite steps skipped" in m for m in messages)


def test_a_second_run_in_a_folder_in_use_is_refused_naming_the_first(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename,
                                                      "started": "today", "command": "run_training.py"}))
        with pytest.raises(RunFolderInUse, match=rf"in use by process {other.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with caplog.at_level(logging.WARNING):
        lock = RunLock(tmp_path).acquire()
    assert "no longer running" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_sigterm_outside_the_training_steps_ends_with_the_resume_command(tmp_path, monkeypatch, capsys):
    import time

    import wsseg.pipeline.tasks
    from wsseg.cli import main

    def making_pseudo_masks(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal arrives long before
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(wsseg.pipeline.tasks, "run_task", making_pseudo_masks)
    before = signal.getsignal(signal.SIGTERM)
    code = main(["train", "--task", "all", "--config", "configs/demo.yaml", "--out", str(tmp_path / "run"),
                 "--set", "train.epochs=2"])
    assert code == 128 + signal.SIGTERM
    said = capsys.readouterr().err
    assert "interrupted by SIGTERM between training steps" in said
    assert f"--config configs/demo.yaml --out {tmp_path / 'run'} --resume --set train.epochs=2" in said
    assert signal.getsignal(signal.SIGTERM) is before


def group_run_config(tmp_path):
    """Task i alone, small enough for seconds a run, with 2 DataLoader workers to receive the signal."""
    cfg = {
        "name": "group",
        "data": {"kind": "synthetic_vaihingen", "root": str(tmp_path / "data"),
                 "options": {"num_tiles": 8, "tile_px": [96, 96], "seed": 3}},
        "split": {"n_labelled": 2, "n_tagged": 4, "n_val": 1},
        "model": {"name": "effnet_lite0_unet", "options": {"pretrained": False}},
        "train": {"epochs": 1, "iters_per_epoch": 12, "batch_size": 2, "crop_px": 64, "optimizer": "adamw",
                  "schedule": "poly", "workers": 2, "precision": "fp32"},
        "eval": {"window_px": 96, "stride_px": 64, "batch_size": 2, "num_triptychs": 0},
    }
    path = tmp_path / "group.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(args, log_path, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(log_path, "ab") as log:  # a file: a pipe nobody reads would block the run once full
        return subprocess.Popen([sys.executable, "-m", "wsseg.cli", *args], cwd=REPO, env=env, stdout=log,
                                stderr=log, **popen)


def children_of(pid):
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads a process's children from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_stops_at_the_step_boundary(tmp_path, sig):
    # SLURM's preemption and `kill -- -PGID` signal every process of the group, Ctrl-C the
    # foreground group: the DataLoader workers receive it too, and must leave it to the main process.
    config, run, log_path = group_run_config(tmp_path), tmp_path / "run", tmp_path / "run.log"
    process = run_cli(["train", "--task", "i", "--config", str(config), "--out", str(run)], log_path,
                      start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # The duration estimate comes after the first 5 of 12 steps: training is under way.
        while "a step here" not in log_path.read_text(errors="replace"):
            assert process.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.01)
        assert len(children_of(process.pid)) >= 2  # the workers, in the group the signal goes to
        os.killpg(process.pid, sig)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    said = log_path.read_text(errors="replace")
    assert code == 128 + sig, said
    assert "Traceback" not in said and "DataLoader worker" not in said, said
    stopped = re.search(rf"interrupted by {signal.Signals(sig).name}: stopped in epoch 1, after step (\d+) of 12", said)
    assert stopped, said
    state = load_checkpoint(run / "task_i" / "last.pt")
    assert state["partial_epoch"]["steps_done"] == int(stopped.group(1)) >= 5

    command = shlex.split(said.split("To continue where it stopped:")[1].strip().splitlines()[0])
    assert command[:2] == ["wsseg", "train"] and command[-3:] == ["--out", str(run), "--resume"], command
    resumed = run_cli(command[1:], tmp_path / "resumed.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text(errors="replace")
    assert f"in epoch 1, after step {stopped.group(1)}" in (tmp_path / "resumed.log").read_text(errors="replace")
    assert (run / "task_i" / "done.json").is_file()
