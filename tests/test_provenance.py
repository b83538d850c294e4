"""run_info.json: every run folder records the code, packages, command and machine it ran on."""

import datetime
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wsseg
from wsseg.core import provenance
from wsseg.core.checkpoint import CheckpointError
from wsseg.core.provenance import RECORDED_PACKAGES, RUN_INFO_FILE, record_run_start

ROOT = Path(__file__).resolve().parents[1]
TEST_TOOLS = {"pytest", "hypothesis", "import-linter", "grimp"}


def normalised(name: str) -> str:
    return name.lower().replace("_", "-")


def test_every_runtime_requirement_is_recorded():
    pinned = {normalised(line.split("==")[0]) for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.split("#")[0].strip()}
    assert pinned - TEST_TOOLS == {normalised(name) for name in RECORDED_PACKAGES}


def test_a_new_run_records_where_it_came_from(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["wsseg", "train", "--config", "c.yaml"])
    info = record_run_start(tmp_path, processes=2)
    assert json.loads((tmp_path / RUN_INFO_FILE).read_text()) == info
    assert info["command"] == ["wsseg", "train", "--config", "c.yaml"] and info["resume"] is False
    assert info["resumed"] == [] and info["processes"] == 2
    assert datetime.datetime.fromisoformat(info["started"]).tzinfo is not None
    packages = info["packages"]
    assert packages["wsseg"] == wsseg.__version__
    for name in ("torch", "torchvision", "numpy"):
        assert packages[name] == importlib.metadata.version(name)
    assert info["python"].endswith(".".join(map(str, sys.version_info[:3])))
    machine = info["machine"]
    assert machine["torch_threads"] == torch.get_num_threads() and machine["cpu_count"] >= 1
    assert machine["cpu"] and machine["platform"]
    assert len(machine["cuda_devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert set(info["git"]) == {"commit", "dirty"}


def test_a_resume_keeps_the_first_start_and_appends_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["first"])
    first = record_run_start(tmp_path)
    monkeypatch.setattr(sys, "argv", ["second", "--resume"])
    record_run_start(tmp_path, resume=True)
    monkeypatch.setattr(sys, "argv", ["third", "--resume"])
    info = record_run_start(tmp_path, resume=True)
    assert {k: v for k, v in info.items() if k != "resumed"} == {k: v for k, v in first.items() if k != "resumed"}
    assert [start["command"][0] for start in info["resumed"]] == ["second", "third"]
    assert all(start["resume"] for start in info["resumed"])


def test_a_resumed_run_from_before_run_info_gets_one_that_says_so(tmp_path):
    info = record_run_start(tmp_path, resume=True)
    assert info["resume"] is True and info["resumed"] == []


def test_an_unreadable_run_info_stops_a_resume(tmp_path):
    (tmp_path / RUN_INFO_FILE).write_text("{cut off")
    with pytest.raises(CheckpointError, match="run_info.json: not valid JSON .* move it aside"):
        record_run_start(tmp_path, resume=True)
    assert (tmp_path / RUN_INFO_FILE).read_text() == "{cut off"  # nothing lost


def test_the_commit_is_this_checkouts(tmp_path, monkeypatch):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert provenance.git_commit() == head
    # An installed copy inside some other repository is not that repository's commit.
    other = tmp_path / "project"
    (other / "venv" / "wsseg").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    monkeypatch.setattr(provenance, "PACKAGE_DIR", (other / "venv" / "wsseg").resolve())
    assert provenance.git_commit() is None and provenance.git_dirty() is None
