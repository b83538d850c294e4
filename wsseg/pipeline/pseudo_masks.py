"""Pseudo masks for the N2 tiles from the trained single-stage model (task ii).

For every fixed-grid crop of an N2 tile (with image-level tags, `weak.tags: image`, the whole
tile): multi-scale + flip inference restricted to the crop's tags, background power, PAMR
(Araslanov & Roth, CVPR 2020), optionally a product with task i's segmenter
(`pseudo_labels.fusion`), dense CRF (Krähenbühl & Koltun, NeurIPS 2011), then a confidence rule
that leaves uncertain pixels unlabelled. Overlapping crops are averaged into one mask per tile,
written as an indexed PNG with the dataset palette. The N2 ground truth, where it exists, is read
only to measure the pseudo masks (`pseudo_quality.json`); nothing of it reaches training.

Two steps, so that what the masks are made with is decided once and can be read in one place:
`calibrate_masks` runs the calibration tiles and returns a frozen `MaskPlan` (PAMR, CRF, the
classes left to task i's segmenter, the background verdict, and the figures they rest on), and
`write_pseudo_masks` applies it to N2. The per-crop inference both use is `pseudo_inference`'s.
"""

from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wsseg.core.checkpoint import CheckpointError, load_checkpoint
from wsseg.core.distributed import choose_device
from wsseg.core.io import atomic_write, atomic_write_json
from wsseg.core.metrics import unlearned_classes
from wsseg.datasets.base import ClassSpec, TileSource
from wsseg.datasets.colour import save_index_png
from wsseg.datasets.image_files import read_index_png
from wsseg.datasets.splits import Split, abbreviated
from wsseg.datasets.tags import CropTag
from wsseg.models.single_stage import ClassLayout
from wsseg.pipeline.config import Config
from wsseg.pipeline.config_checks import class_layout
from wsseg.pipeline.data import Run
from wsseg.pipeline.evaluation import load_segmenter
from wsseg.pipeline.pseudo_inference import CropPredictor, TileMasks, crops_in_order
from wsseg.pipeline.pseudo_quality import PseudoMaskQuality
from wsseg.pipeline.weak import build_single_stage

log = logging.getLogger(__name__)

# A pixel whose pre-CRF class probability is at most this stays unlabelled (as does one whose class
# the CRF changed): below an even chance the pseudo label is more often wrong than right.
CONFIDENCE_THRESHOLD = 0.5
# A class the single-stage model finds with a recall below this on the calibration tiles is left
# to task i's segmenter alone: at 5 % it practically never wins, and the fusion's product would
# erase it wherever the segmenter sees it.
ABSTAIN_BELOW_RECALL = 0.05
# A constant background channel whose class the trained model finds with a recall below this on
# the calibration tiles never wins anywhere: the model is retrained with every class learned.
REJECT_BACKGROUND_BELOW_RECALL = 0.05


class BackgroundRejected(Exception):
    """The single-stage model's constant channel (`weak.single_stage.constant_background`) never
    wins on the calibration tiles: every pseudo mask would lose that class."""

    def __init__(self, class_name: str, recall: float, threshold: float, tiles: list[str]):
        self.note = {"class": class_name, "recall": recall, "threshold": threshold, "calibration_tiles": tiles}
        super().__init__(f"the single-stage model finds its constant background class {class_name!r} with recall "
                         f"{recall:.4f} on the calibration tiles ({abbreviated(tiles)}), below {threshold}")


@dataclass(frozen=True)
class MaskPlan:
    """What the calibration tiles decided for the N2 masks, fixed before any of them is written,
    with the figures it was decided on: the report shows both, so a setting can be traced to
    its measurement. A rejected constant background is no plan: `calibrate_masks` raises."""

    calibration_tiles: tuple[str, ...]
    use_pamr: bool
    crf: bool
    # Class indices the single-stage model (almost) never finds there: task i's segmenter alone decides them.
    abstaining_classes: tuple[int, ...]
    # The single-stage layout's background ("constant" or "learned"), kept by the calibration.
    single_stage_background: str
    # The note of the constant background rejected before this model, with every class learned, replaced it.
    background_rejected: dict | None
    pamr_calibration: dict | None  # mIoU without and with PAMR, when `use_pamr` was "auto"
    crf_calibration: dict | None  # mIoU without and with the CRF, when `crf` was "auto"
    calibration_precision: dict  # per class, of the confident pixels

    def abstain(self, num_classes: int) -> np.ndarray:
        """C booleans: the abstaining classes, as the fusion takes them."""
        mask = np.zeros(num_classes, bool)
        mask[list(self.abstaining_classes)] = True
        return mask


def make_pseudo_masks(run: Run, crop_tags: list[CropTag], checkpoint: Path, out_dir: Path,
                      segmenter_checkpoint: Path | None = None, background_rejected: dict | None = None) -> dict:
    """Write one pseudo mask PNG per N2 tile and return (and save) their quality report.

    `segmenter_checkpoint`: task i's segmenter, needed when `weak.pseudo.segmenter_weight` > 0.
    Raises BackgroundRejected, before any N2 mask is written, if the constant background channel
    never wins on the calibration tiles; `background_rejected` (its note) goes into the report
    of the model trained instead.
    """
    cfg, source, split = run.cfg, run.source, run.split
    pm = cfg.weak.pseudo
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = class_layout(cfg, source)
    # The training device: on a GPU machine the networks and PAMR run there, the CRF on the CPU.
    device = choose_device(cfg.device, run.dist)
    model = build_single_stage(cfg, layout, pretrained=False)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    model.to(device).eval()
    segmenter = (_task_i_segmenter(cfg, source.classes, segmenter_checkpoint, device) if pm.segmenter_weight > 0
                 else None)

    # Calibration tiles go first: their pseudo masks are never used, but measured against their
    # pixel labels they tell which classes and refinements come out wrong, before any N2 mask is
    # written. The weak model never sees a pixel label, so the N1 tiles serve; task i's segmenter
    # learned the N1 tiles by heart, so once it takes part the validation tiles do.
    calibration = list(split.val) if segmenter is not None else list(split.labelled)
    calibration_crops = crops_in_order(cfg, source, crop_tags, calibration)
    n2_crops = crops_in_order(cfg, source, crop_tags, list(split.tagged))
    predictor = CropPredictor(cfg, source, model, layout, segmenter, device)
    # "auto" runs the CRF on the calibration tiles, to decide.
    processes = min(max(1, cfg.train.workers), multiprocessing.cpu_count()) if pm.crf else 0
    pamr_pass = len(calibration_crops) if pm.use_pamr == "auto" else 0
    with TileMasks(predictor, source, processes, pamr_pass + len(calibration_crops) + len(n2_crops)) as masks:
        plan = calibrate_masks(run, layout, masks, calibration, calibration_crops, background_rejected)
        quality = write_pseudo_masks(run, plan, masks, n2_crops, out_dir)
    return report_pseudo_masks(run, plan, quality, n2_crops, out_dir)


def calibrate_masks(run: Run, layout: ClassLayout, masks: TileMasks, calibration: list[str],
                    calibration_crops: list[CropTag], background_rejected: dict | None = None) -> MaskPlan:
    """The `MaskPlan` the calibration tiles give: PAMR kept if it raises their mIoU (`use_pamr:
    auto`), the CRF likewise (`crf: auto`), the classes the single-stage model misses left to
    task i's segmenter; BackgroundRejected if its constant background never wins there."""
    pm, source, predictor = run.cfg.weak.pseudo, run.source, masks.predictor
    classes = source.classes
    pamr_calibration = None
    if pm.use_pamr == "auto":
        pamr_calibration = predictor.compare_pamr(calibration_crops, masks.progress)
        predictor.use_pamr = pamr_calibration["miou_with_pamr"] > pamr_calibration["miou_without_pamr"]
        log.info("pseudo masks: PAMR %s (calibration mIoU before CRF %.4f without, %.4f with)",
                 "stays on" if predictor.use_pamr else "is switched off", pamr_calibration["miou_without_pamr"],
                 pamr_calibration["miou_with_pamr"])
    quality = PseudoMaskQuality(classes)
    weak_cm = np.zeros((classes.num_classes,) * 2, np.int64)
    for tile_id, raw, refined, labels in masks(calibration_crops, bool(pm.crf), CONFIDENCE_THRESHOLD, weak_cm):
        quality.calibrate(labels, source.label(tile_id), raw, refined)
    _check_background(layout, classes, weak_cm, calibration)
    crf = quality.crf_decision() if pm.crf == "auto" else bool(pm.crf)
    abstain = np.zeros(classes.num_classes, bool)
    if predictor.segmenter is not None:
        abstain = unlearned_classes(weak_cm, ABSTAIN_BELOW_RECALL)
        if abstain.any():
            log.warning("pseudo masks: the single-stage model finds %s on the calibration tiles with recall "
                        "below %.2f: task i's segmenter alone decides %s", _names(classes, abstain),
                        ABSTAIN_BELOW_RECALL, "it" if abstain.sum() == 1 else "them")
    return MaskPlan(calibration_tiles=tuple(calibration), use_pamr=predictor.use_pamr, crf=crf,
                    abstaining_classes=tuple(int(c) for c in np.flatnonzero(abstain)),
                    single_stage_background=layout.background, background_rejected=background_rejected,
                    pamr_calibration=pamr_calibration, crf_calibration=quality.crf_calibration,
                    calibration_precision=quality.calibration_precision())


def write_pseudo_masks(run: Run, plan: MaskPlan, masks: TileMasks, n2_crops: list[CropTag],
                       out_dir: Path) -> PseudoMaskQuality:
    """Apply `plan` to the N2 crops: one PNG per tile in `out_dir`, measured where it has ground truth."""
    source, predictor = run.source, masks.predictor
    classes = source.classes
    predictor.use_pamr, predictor.abstain = plan.use_pamr, plan.abstain(classes.num_classes)
    quality = PseudoMaskQuality(classes)
    for tile_id, raw, refined, labels in masks(n2_crops, plan.crf, CONFIDENCE_THRESHOLD):
        # Atomic: a run killed here leaves whole masks or none, never half a PNG.
        atomic_write(out_dir / f"{tile_id}.png", lambda tmp: save_index_png(tmp, labels, classes.palette))
        ground_truth = source.label(tile_id) if source.tile(tile_id).label_path is not None else None
        quality.measure(labels, raw, refined, ground_truth)
    return quality


def report_pseudo_masks(run: Run, plan: MaskPlan, quality: PseudoMaskQuality, n2_crops: list[CropTag],
                        out_dir: Path) -> dict:
    """The quality report of the N2 masks beside the plan they were made with: pseudo_quality.json."""
    classes = run.source.classes
    tagged_classes = sorted({c for tag in n2_crops for c in tag.classes})
    settings = {"pamr": plan.use_pamr}
    if plan.pamr_calibration is not None:
        settings["pamr_calibration"] = plan.pamr_calibration
    if plan.background_rejected is not None:
        settings["background_rejected"] = plan.background_rejected
    report = quality.report(tiles=len(run.split.tagged), crf=plan.crf,
                            segmenter_weight=run.cfg.weak.pseudo.segmenter_weight,
                            calibration_tiles=list(plan.calibration_tiles),
                            single_stage_background=plan.single_stage_background,
                            weak_abstains=[classes.names[c] for c in plan.abstaining_classes],
                            tagged_classes=tagged_classes, calibration_precision=plan.calibration_precision,
                            crf_calibration=plan.crf_calibration, **settings)
    if report["classes_never_labelled"]:
        log.warning("pseudo masks: %s tagged in N2 but in no pseudo mask: task ii learns nothing of %s from N2",
                    ", ".join(report["classes_never_labelled"]),
                    "it" if len(report["classes_never_labelled"]) == 1 else "them")
    atomic_write_json(out_dir / "pseudo_quality.json", report)
    log.info("pseudo masks: coverage %.3f%s", report["coverage"],
             "".join(f", mIoU {k[5:]} {report[k]:.4f}" for k in ("miou_raw", "miou_crf", "miou_final") if k in report))
    return report


def _check_background(layout: ClassLayout, classes: ClassSpec, weak_cm: np.ndarray, calibration: list[str]) -> None:
    """Raise BackgroundRejected if the constant channel's class is (almost) never the argmax
    where the calibration tiles hold it: no fusion can bring a class back from near-zero."""
    threshold = REJECT_BACKGROUND_BELOW_RECALL
    if layout.background_index is None:
        return
    background = layout.background_index
    support = int(weak_cm[background].sum())
    if support == 0:
        return  # the calibration tiles do not hold the class: no verdict
    recall = float(weak_cm[background, background]) / support
    if recall < threshold:
        raise BackgroundRejected(classes.names[background], recall, threshold, calibration)


def _names(classes: ClassSpec, mask: np.ndarray) -> str:
    return ", ".join(classes.names[c] for c in np.flatnonzero(mask))


def _task_i_segmenter(cfg: Config, classes: ClassSpec, checkpoint: Path | None,
                      device: torch.device) -> torch.nn.Module:
    if checkpoint is None or not Path(checkpoint).exists():
        raise CheckpointError(f"weak.pseudo.segmenter_weight is {cfg.weak.pseudo.segmenter_weight} but task i's "
                              f"segmenter checkpoint {checkpoint} does not exist: run task i first")
    return load_segmenter(cfg, classes.num_classes, checkpoint, device)


def pseudo_mask_samples(source: TileSource, split: Split, pm_dir: Path, count: int):
    """(tile, image, pseudo mask, ground truth) for the first `count` N2 tiles, for triptychs; the
    ground truth is None for an image tagged without a mask (`weak.tags_file`)."""
    samples = []
    for tile_id in list(split.tagged)[:count]:
        gt = source.label(tile_id) if source.tile(tile_id).label_path is not None else None
        samples.append((tile_id, source.image(tile_id), read_index_png(pm_dir / f"{tile_id}.png"), gt))
    return samples
