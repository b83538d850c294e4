"""A trained segmenter scored on the test tiles with the full report, and loaded for inference.

Every arm ends here (`segmenter.train_segmenter` evaluates its best checkpoint), and so do
`wsseg eval` on a run checkpoint or a published model; the pseudo masks load task i's segmenter
with `load_segmenter`. Whole tiles, by sliding window, as the metrics of every arm are taken.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from wsseg.core.checkpoint import CheckpointError, load_checkpoint, load_weights
from wsseg.core.class_weights import class_pixel_counts
from wsseg.core.distributed import autocast_dtype, choose_device
from wsseg.core.evaluate import evaluate_tiles
from wsseg.core.metrics import XVIEW2_CLASSES, majority_baseline_miou, xview2_score
from wsseg.core.precision import resolve_precision
from wsseg.core.report import write_report
from wsseg.datasets.base import printable
from wsseg.models import build_segmenter, untrained_options
from wsseg.pipeline.config import Config
from wsseg.pipeline.data import Run

log = logging.getLogger(__name__)



def max_f_class(cfg: Config) -> str | None:
    """The class scored at every threshold beside IoU: KITTI Road's road, whose benchmark ranks by
    MaxF in the image domain (Fritsch et al., ITSC 2013)."""
    return "road" if cfg.data.kind == "kitti_road" else None

def load_segmenter(cfg: Config, num_classes: int, checkpoint: Path | dict, device: torch.device) -> torch.nn.Module:
    """The configured segmenter with a checkpoint's weights (a path or a loaded checkpoint), in eval mode."""
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint, map_location=device)
    model = build_segmenter(cfg.model.name, num_classes, **untrained_options(cfg.model.options))
    load_weights(model, state["model"], "the checkpoint" if isinstance(checkpoint, dict) else str(checkpoint))
    return model.to(device).eval()


def evaluate_checkpoint(run: Run, out_dir: Path, checkpoint: Path, history: list[dict] | None = None,
                        title: str = "Evaluation", train_tile_ids=None, epochs_trained: int | None = None) -> dict:
    """Whole-tile sliding-window evaluation of a checkpoint on the test tiles, with the full report.
    `epochs_trained` (the epochs of the training that chose it) goes into `metrics["checkpoint"]`."""
    device = choose_device(run.cfg.device, run.dist)
    state = load_checkpoint(checkpoint, map_location=device)
    check_classes(state.get("classes", {}).get("names"), run.source.classes.names, str(checkpoint))
    model = load_segmenter(run.cfg, run.source.classes.num_classes, state, device)
    log.info(f"evaluating {checkpoint} (epoch {state['epoch'] + 1}) on {len(run.split.test)} test tiles")
    info = {"path": checkpoint.name, "epoch": state["epoch"] + 1}
    if epochs_trained is not None:
        info["epochs_trained"] = int(epochs_trained)
    return evaluate_model(run, out_dir, model, info, history or state.get("history", []), title, train_tile_ids)


def check_classes(model_classes, dataset_classes, source: str) -> None:
    """A model scored on a dataset must predict that dataset's classes, by name and in order."""
    if model_classes is not None and tuple(model_classes) != tuple(dataset_classes):
        raise CheckpointError(f"{source} predicts the classes ({', '.join(model_classes)}), the dataset has "
                              f"({', '.join(dataset_classes)})")


def evaluate_model(run: Run, out_dir: Path, model: torch.nn.Module, checkpoint_info: dict,
                   history: list[dict] | None = None, title: str = "Evaluation", train_tile_ids=None) -> dict:
    """Whole-tile sliding-window evaluation of a loaded segmenter on the test tiles, with the full
    report; `checkpoint_info` says in metrics.json which model it was.

    Under torchrun every process scores its share of the tiles and returns the same metrics;
    rank 0 writes the report."""
    cfg, source, split = run.cfg, run.source, run.split
    device = choose_device(cfg.device, run.dist)
    classes = source.classes
    model = model.to(device).eval()
    precision = resolve_precision(cfg.train.precision, model, (cfg.eval.batch_size, 3, cfg.eval.window_px,
                                                               cfg.eval.window_px), device,
                                  cache_dir=run.run_dir, training=False,
                                  dist=run.dist, what="evaluation")
    amp_dtype = autocast_dtype(precision, device)
    shown = list(split.test)[: cfg.eval.num_triptychs]
    result = evaluate_tiles(model, source, split.test, cfg.eval.window_px, cfg.eval.stride_px, cfg.eval.batch_size,
                            device, amp_dtype, keep_predictions=shown, score_class=max_f_class(cfg),
                            progress=run.dist.is_main, dist=run.dist)
    metrics = result.metrics(classes)
    if tuple(classes.names) == XVIEW2_CLASSES:  # the challenge's score goes with its damage grades
        metrics["xview2"] = xview2_score(result.cm)
    train_ids = train_tile_ids if train_tile_ids is not None else split.labelled
    train_counts = sum(class_pixel_counts(source.label(t), classes.num_classes, classes.ignore_index)
                       for t in train_ids)
    metrics["baseline_majority_miou"] = majority_baseline_miou(train_counts, result.cm, classes.names, classes.in_mean)
    metrics["checkpoint"] = checkpoint_info
    if run.skipped_tiles:
        metrics["skipped_tiles"] = [printable(t) for t in run.skipped_tiles]
    if run.dist.is_main:
        samples = [(t, source.image(t), source.label(t), result.predictions[t]) for t in shown]
        write_report(out_dir, metrics, classes.names, classes.palette, history or [], samples, title=title)
    return metrics
