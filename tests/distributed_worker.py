"""One process of the two-process CPU run of tests/test_distributed.py, started by torchrun.

Every process writes what it saw to `<report-dir>/rank<r>.json`, for the test to compare:
  sharded_eval   the confusion matrices of a seeded model on a few tiles, split among the processes,
                 beside those of the same model in this process alone (no splitting);
  weights        a hash of the weights each training stage ended with, in this process;
  written        every file this process opened for writing, or renamed into place, inside
                 the run folder (a Python audit hook sees each `open`, `os.open` and `os.replace`).

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_worker.py \
        --config tiny.yaml --report-dir reports --new-run run_dir
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of names and exact values: equal only for bit-identical weights and buffers."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class WriteRecorder:
    """Paths under `folders` that this process opened for writing or renamed into place."""

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def __init__(self, folders: list[Path]):
        self.folders = [str(folder.resolve()) + os.sep for folder in folders]
        self.written: set[str] = set()

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & self.WRITE_FLAGS)
        elif event == "os.rename":  # os.rename and os.replace: the destination is written
            path, writes = args[1], True
        else:
            return
        if writes and isinstance(path, (str, bytes, os.PathLike)):
            full = os.path.abspath(os.fsdecode(path))
            if any(full.startswith(folder) for folder in self.folders):
                self.written.add(full)


def sharded_evaluation(config: Path, rank_info) -> dict:
    """The same tiles and model evaluated split among the processes and in this process alone."""
    from wsseg.core import evaluate
    from wsseg.core.distributed import DistInfo, main_process_first
    from wsseg.pipeline.config_files import load_config
    from wsseg.pipeline.data import load_source

    cfg = load_config(config)
    # Rank 0 generates the synthetic tiles, the other finds them (as the command line does): two
    # processes generating into one folder read each other's half-written files.
    with main_process_first(rank_info):
        source = load_source(cfg)
    # Three tiles: the processes get unequal shares (2 and 1), as they do on real test sets.
    tile_ids = [tile.tile_id for tile in source.tiles][:3]
    torch.manual_seed(0)  # the same model in every process
    model = torch.nn.Conv2d(3, source.classes.num_classes, 3, padding=1)

    predicted = []
    predict_tile = evaluate.predict_tile

    def counting_predict_tile(*args, **kwargs):
        predicted.append(1)
        return predict_tile(*args, **kwargs)

    def run(dist):
        return evaluate.evaluate_tiles(model, source, tile_ids, cfg.eval.window_px, cfg.eval.stride_px,
                                       cfg.eval.batch_size, "cpu", keep_predictions=tile_ids, progress=False,
                                       dist=dist)

    evaluate.predict_tile = counting_predict_tile
    try:
        sharded = run(rank_info)
        tiles_predicted = len(predicted)
        alone = run(DistInfo())
    finally:
        evaluate.predict_tile = predict_tile
    return {"tiles": tile_ids, "tiles_predicted": tiles_predicted,
            "cm": sharded.cm.tolist(), "cm_eroded": sharded.cm_eroded.tolist(),
            "cm_alone": alone.cm.tolist(), "cm_eroded_alone": alone.cm_eroded.tolist(),
            "predictions_equal": {t: bool((sharded.predictions[t] == alone.predictions[t]).all()) for t in tile_ids}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--report-dir", type=Path, required=True)
    parser.add_argument("--new-run", type=Path, required=True, help="a new run folder: task i under this torchrun")
    args = parser.parse_args()

    from wsseg.cli import main as wsseg_main
    from wsseg.core import stage
    from wsseg.core.checkpoint import unwrap
    from wsseg.core.distributed import init_distributed

    info = init_distributed()
    recorder = WriteRecorder([args.new_run])
    sys.addaudithook(recorder)
    report = {"rank": info.rank, "world_size": info.world_size, "sharded_eval": sharded_evaluation(args.config, info)}

    weights = report["weights"] = []
    fit = stage.Stage.fit

    def fit_and_hash(self, model, *fit_args, **fit_kwargs):
        history = fit(self, model, *fit_args, **fit_kwargs)
        weights.append({"stage": str(self.stage_dir), "hash": weights_hash(unwrap(model).state_dict())})
        return history

    stage.Stage.fit = fit_and_hash
    train = ["train", "--task", "i", "--config", str(args.config), "--out", str(args.new_run)]
    report["exit_codes"] = [wsseg_main(train)]
    report["written"] = sorted(recorder.written)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    (args.report_dir / f"rank{info.rank}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
