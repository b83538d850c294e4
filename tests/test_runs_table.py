"""benchmarks/runs_table.py: separate runs into one results JSON, choosing by validation, reporting test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import runs_table  # noqa: E402
from wsseg.core.checkpoint import save_checkpoint  # noqa: E402


def fake_run(root: Path, name: str, sets: list[str], history: list[float], test: float, seed: int = 1) -> Path:
    run = root / name
    (run / "task_i").mkdir(parents=True)
    command = ["-c", "train", "--task", "i", "--config", "configs/x.yaml"]
    for item in ["data.root=/somewhere/on/a/machine", *sets]:
        command += ["--set", item]
    (run / "run_info.json").write_text(json.dumps({"command": command, "git": {"commit": "abcdef0123"},
                                                   "started": "2026-12-07T22:00:00+00:00"}))
    (run / "split.json").write_text(json.dumps({"seed": seed, "labelled": ["a"]}))
    (run / "task_i" / "done.json").write_text(json.dumps({"miou": test}))
    save_checkpoint(run / "task_i" / "last.pt",
                    {"history": [{"epoch": e + 1, "val_miou": v} for e, v in enumerate(history)]})
    return run


def test_rows_keep_overrides_best_validation_and_test(tmp_path):
    a = fake_run(tmp_path, "a", ["train.lr=0.01"], [0.2, 0.5, 0.4], 0.45)
    b = fake_run(tmp_path, "b", [], [0.3, 0.35], 0.5)
    out = tmp_path / "r.json"
    assert runs_table.main(["--what", "t", "--out", str(out), str(a), str(b)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["overrides"] == ["train.lr=0.01"]  # the machine's data path is not kept
    assert (rows[0]["best_val_miou"], rows[0]["best_val_epoch"], rows[0]["test_miou"]) == (0.5, 2, 0.45)
    assert (rows[1]["best_val_miou"], rows[1]["best_val_epoch"]) == (0.35, 2)
    assert rows[1]["split_seed"] == 1 and rows[1]["commit"] == "abcdef0"


def test_an_unfinished_stage_is_refused_by_name(tmp_path):
    run = fake_run(tmp_path, "a", [], [0.2], 0.3)
    (run / "task_i" / "done.json").unlink()
    with pytest.raises(SystemExit, match="task_i has not finished"):
        runs_table.main(["--what", "t", "--out", str(tmp_path / "r.json"), str(run)])
