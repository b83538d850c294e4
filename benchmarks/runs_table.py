#!/usr/bin/env python
"""Collect finished `wsseg train` runs into one results JSON: one row per run and stage.

For recipe comparisons run as separate `wsseg train` commands (one variant each, e.g. while a
study occupies the other core) rather than as one `wsseg sweep`: each row keeps the command's
`--set` overrides, the split seed, the best validation mIoU and its epoch (what a choice may
rest on) and the test mIoU (what is reported), with the run's commit and date.

    python benchmarks/runs_table.py --stage task_i --what "task-i recipe, Stanford Background" \\
        --out benchmarks/results/recipe_task_i.json RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info  # noqa: E402
from wsseg.core.io import atomic_write_json  # noqa: E402
from wsseg.pipeline.sweep import validation_history  # noqa: E402


def overrides_of(command: list[str]) -> list[str]:
    """The `--set` values of a recorded command line, with machine paths (data.root) left out."""
    pairs = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "--set"]
    return [p for p in pairs if not p.startswith("data.root=")]


def row(run_dir: Path, stage: str) -> dict:
    info = json.loads((run_dir / "run_info.json").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    done = run_dir / stage / "done.json"
    if not done.exists():
        raise SystemExit(f"{run_dir}: stage {stage} has not finished (no {done.name})")
    test = json.loads(done.read_text())
    history = validation_history(run_dir / stage)
    best = max(history, key=lambda r: r["val_miou"], default=None)
    command = info.get("command", [])
    config = command[command.index("--config") + 1] if "--config" in command else None
    return {"run": run_dir.name, "config": config, "overrides": overrides_of(command),
            "split_seed": split.get("seed"), "stage": stage,
            "best_val_miou": best["val_miou"] if best else None, "best_val_epoch": best["epoch"] if best else None,
            "test_miou": test.get("miou"), "commit": info.get("git", {}).get("commit", "")[:7],
            "started": info.get("started")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--stage", default="task_i")
    parser.add_argument("--what", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = [row(r, args.stage) for r in args.runs]
    atomic_write_json(args.out, {"what": args.what, "machine": machine_info(), "rows": rows})
    for r in rows:
        print(f"{r['run']:32s} seed {r['split_seed']}  val {r['best_val_miou']:.4f} (epoch {r['best_val_epoch']})  "
              f"test {r['test_miou']:.4f}  {' '.join(r['overrides'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
