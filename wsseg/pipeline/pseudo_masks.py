"""Pseudo masks for the N2 tiles from the trained single-stage model (task ii).

For every fixed-grid crop of an N2 tile (with image-level tags, `weak.tags: image`, the whole
tile): multi-scale + flip inference restricted to the crop's tags, background power, PAMR
(Araslanov & Roth, CVPR 2020), optionally a product with task i's segmenter
(`pseudo_labels.fusion`), dense CRF (Krähenbühl & Koltun, NeurIPS 2011), then a confidence rule
that leaves uncertain pixels unlabelled. Overlapping crops are averaged into one mask per tile,
written as an indexed PNG with the dataset palette. The N2 ground truth, where it exists, is read
only to measure the pseudo masks (`pseudo_quality.json`); nothing of it reaches training.
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

import numpy as np
import torch

from wsseg.core.checkpoint import CheckpointError, load_checkpoint
from wsseg.core.config import Config
from wsseg.core.distributed import choose_device
from wsseg.core.evaluate import sliding_window_logits
from wsseg.core.io import atomic_write, atomic_write_json
from wsseg.core.metrics import confusion_matrix, segmentation_metrics, unlearned_classes
from wsseg.core.progress import progress_bar
from wsseg.core.workers import SignalSafeDataLoader, leave_stop_signals_to_parent, stop_signals_held
from wsseg.datasets.base import ClassSpec, TileSource
from wsseg.datasets.colour import read_index_png, save_index_png
from wsseg.datasets.crops import GridCropDataset, image_to_tensor
from wsseg.datasets.splits import Split, abbreviated
from wsseg.datasets.tags import CropTag, compute_crop_tags
from wsseg.models.single_stage import PAMR_DILATIONS, PAMR_ITER, ClassLayout, SingleStageSegmenter
from wsseg.pipeline.config_checks import class_layout
from wsseg.pipeline.data import Run, tag_grid_px
from wsseg.pipeline.evaluation import load_segmenter
from wsseg.pipeline.pseudo_quality import PseudoMaskQuality
from wsseg.pipeline.weak import build_single_stage
from wsseg.pseudo_labels.crf import dense_crf
from wsseg.pseudo_labels.fusion import allowed_classes, fuse_with_segmenter
from wsseg.pseudo_labels.pamr import refine_with_pamr
from wsseg.pseudo_labels.tiles import TileAccumulator, confident_labels

log = logging.getLogger(__name__)

# The background channel raised to this power before the argmax (it wins at object borders
# otherwise): the published inference's 3 (Araslanov & Roth, CVPR 2020).
BG_POW = 3.0
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
    """The single-stage model's constant channel (`weak.single_stage.background_class`) never
    wins on the calibration tiles: every pseudo mask would lose that class."""

    def __init__(self, class_name: str, recall: float, threshold: float, tiles: list[str]):
        self.note = {"class": class_name, "recall": recall, "threshold": threshold, "calibration_tiles": tiles}
        super().__init__(f"the single-stage model finds its constant background class {class_name!r} with recall "
                         f"{recall:.4f} on the calibration tiles ({abbreviated(tiles)}), below {threshold}")


def make_pseudo_masks(run: Run, crop_tags: list[CropTag], checkpoint: Path, out_dir: Path,
                      segmenter_checkpoint: Path | None = None, background_rejected: dict | None = None) -> dict:
    """Write one pseudo mask PNG per N2 tile and return (and save) their quality report.

    `segmenter_checkpoint`: task i's segmenter, needed when `weak.pseudo.segmenter_weight` > 0.
    Raises BackgroundRejected, before any N2 mask is written, if the constant background channel
    never wins on the calibration tiles; `background_rejected` (its note) goes into the report
    of the model trained instead.
    """
    cfg, source, split = run.cfg, run.source, run.split
    pm, classes = cfg.weak.pseudo, source.classes
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = class_layout(cfg, source)
    # The training device: on a GPU machine the networks and PAMR run there, the CRF on the CPU.
    device = choose_device(cfg.device, run.dist)
    model = build_single_stage(cfg, layout, pretrained=False)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    model.to(device).eval()
    segmenter = _task_i_segmenter(cfg, classes, segmenter_checkpoint, device) if pm.segmenter_weight > 0 else None

    # Calibration tiles go first: their pseudo masks are never used, but measured against their
    # pixel labels they tell which classes and refinements come out wrong, before any N2 mask is
    # written. The weak model never sees a pixel label, so the N1 tiles serve; task i's segmenter
    # learned the N1 tiles by heart, so once it takes part the validation tiles do.
    calibration = list(split.val) if segmenter is not None else list(split.labelled)
    calibration_crops = _crops_in_order(cfg, source, crop_tags, calibration)
    n2_crops = _crops_in_order(cfg, source, crop_tags, list(split.tagged))
    quality = PseudoMaskQuality(classes)
    predictor = CropPredictor(cfg, source, model, layout, segmenter, device)

    crf = bool(pm.crf)  # "auto" runs it on the calibration tiles, to decide
    processes = min(max(1, pm.workers), multiprocessing.cpu_count()) if crf else 0
    # Crops are predicted in this process, their CRFs run in a pool, in order.
    pool = None
    if processes > 1:
        with stop_signals_held():
            pool = multiprocessing.get_context("spawn").Pool(processes, initializer=leave_stop_signals_to_parent)
    pamr_pass = len(calibration_crops) if pm.use_pamr == "auto" else 0
    progress = progress_bar(total=pamr_pass + len(calibration_crops) + len(n2_crops), desc="pseudo masks")

    def tile_masks(crops, weak_cm=None):
        jobs = predictor.predictions(crops, crf, weak_cm)
        results = pool.imap(_crf_job, jobs, chunksize=2) if pool else map(_crf_job, jobs)
        for tile_id, accumulator in _tiles(_counted(results, progress), crops, source):
            raw, refined = accumulator.means()
            yield tile_id, raw, refined, confident_labels(raw, refined, CONFIDENCE_THRESHOLD, classes.ignore_index)

    def calibrate(weak_cm):
        for tile_id, raw, refined, labels in tile_masks(calibration_crops, weak_cm):
            quality.calibrate(labels, source.label(tile_id), raw, refined)

    finished = False
    try:
        pamr_calibration = None
        if pm.use_pamr == "auto":
            pamr_calibration = predictor.compare_pamr(calibration_crops, progress)
            predictor.use_pamr = pamr_calibration["miou_with_pamr"] > pamr_calibration["miou_without_pamr"]
            log.info("pseudo masks: PAMR %s (calibration mIoU before CRF %.4f without, %.4f with)",
                     "stays on" if predictor.use_pamr else "is switched off", pamr_calibration["miou_without_pamr"],
                     pamr_calibration["miou_with_pamr"])
        weak_cm = np.zeros((classes.num_classes,) * 2, np.int64)
        calibrate(weak_cm)
        _check_background(layout, classes, weak_cm, calibration)
        if pm.crf == "auto":
            crf = quality.crf_decision()
        if segmenter is not None:
            predictor.abstain = unlearned_classes(weak_cm, ABSTAIN_BELOW_RECALL)
            if predictor.abstain.any():
                log.warning("pseudo masks: the single-stage model finds %s on the calibration tiles with recall "
                            "below %.2f: task i's segmenter alone decides %s", _names(classes, predictor.abstain),
                            ABSTAIN_BELOW_RECALL, "it" if predictor.abstain.sum() == 1 else "them")
        for tile_id, raw, refined, labels in tile_masks(n2_crops):
            # Atomic: a run killed here leaves whole masks or none, never half a PNG.
            atomic_write(out_dir / f"{tile_id}.png", lambda tmp: save_index_png(tmp, labels, classes.palette))
            ground_truth = source.label(tile_id) if source.tile(tile_id).label_path is not None else None
            quality.measure(labels, raw, refined, ground_truth)
        finished = True
    finally:
        progress.close()
        if pool is not None:
            # Stopped (Ctrl-C, SIGTERM, an error): the CRFs still queued are of no use, and close()
            # would wait for every one of them.
            if finished:
                pool.close()
            else:
                pool.terminate()
            pool.join()

    tagged_classes = sorted({c for tag in n2_crops for c in tag.classes})
    settings = {"pamr": predictor.use_pamr}
    if pamr_calibration is not None:
        settings["pamr_calibration"] = pamr_calibration
    if background_rejected is not None:
        settings["background_rejected"] = background_rejected
    report = quality.report(tiles=len(split.tagged), crf=crf, segmenter_weight=pm.segmenter_weight,
                            calibration_tiles=calibration, single_stage_background=layout.background,
                            weak_abstains=[classes.names[c] for c in np.flatnonzero(predictor.abstain)],
                            tagged_classes=tagged_classes, **settings)
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


def _counted(results, progress):
    for result in results:
        progress.update()
        yield result


def _task_i_segmenter(cfg: Config, classes: ClassSpec, checkpoint: Path | None,
                      device: torch.device) -> torch.nn.Module:
    if checkpoint is None or not Path(checkpoint).exists():
        raise CheckpointError(f"weak.pseudo.segmenter_weight is {cfg.weak.pseudo.segmenter_weight} but task i's "
                              f"segmenter checkpoint {checkpoint} does not exist: run task i first")
    return load_segmenter(cfg, classes.num_classes, checkpoint, device)


def _crops_in_order(cfg: Config, source: TileSource, crop_tags: list[CropTag], tile_order: list[str]) -> list[CropTag]:
    """The grid crops of the tiles in `tile_order`, tile by tile; tags of tiles without any are computed."""
    tagged_tiles = {t.tile_id for t in crop_tags}
    extra = compute_crop_tags(source, [t for t in tile_order if t not in tagged_tiles],
                              tag_grid_px(cfg), cfg.weak.tag_min_fraction)
    rank = {tile_id: i for i, tile_id in enumerate(tile_order)}
    return sorted((t for t in [*crop_tags, *extra] if t.tile_id in rank), key=lambda t: (rank[t.tile_id], t.y, t.x))


def inference_scales(cfg: Config, height: int, width: int) -> tuple[float, ...]:
    """The scales of `predict_masks` for an H×W crop, relative to the crop's size.

    Grid tags: `weak.pseudo.scales` as they are. Image tags: the model trained on whole images
    with the longer side resized to `single_stage.crop_px`, so each scale is taken relative to
    that size, evenly on both sides as in training.
    """
    scales = tuple(float(s) for s in cfg.weak.pseudo.scales)
    if cfg.weak.tags == "grid":
        return scales
    return tuple(s * cfg.weak.single_stage.crop_px / max(height, width) for s in scales)


class CropPredictor:
    """Class probabilities of the N2 grid crops: the single-stage model, fused with task i's
    segmenter when it takes part (with the classes in `abstain` left to the segmenter).

    The networks and PAMR run on `device`, in float32 (the confidence threshold and the fusion
    work on probabilities that 16-bit rounding would move); the probabilities come back to the
    CPU for the fusion and the CRF."""

    def __init__(self, cfg: Config, source: TileSource, model: SingleStageSegmenter, layout: ClassLayout,
                 segmenter: torch.nn.Module | None, device: torch.device = torch.device("cpu")):
        self.cfg, self.source, self.model, self.layout, self.segmenter = cfg, source, model, layout, segmenter
        self.device = device
        self.abstain = np.zeros(source.classes.num_classes, bool)
        self.use_pamr = cfg.weak.pseudo.use_pamr is True

    def weak_probabilities(self, crop: torch.Tensor, tags: torch.Tensor, pamr: bool | None = None) -> np.ndarray:
        """Multi-scale + flip softmax restricted to the tags, background power, PAMR (unless
        `pamr` or `use_pamr` says no); dataset class order."""
        crop = crop.to(self.device)  # once: the network and PAMR both read it there
        probs = self._weak_scores(crop, tags)
        if self.use_pamr if pamr is None else pamr:
            probs = self._refine(crop, probs)
        return self._restricted(probs, tags)

    def _weak_scores(self, crop: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        pm = self.cfg.weak.pseudo
        probs = self.model.predict_masks(crop, tags=self.layout.scored_tags(tags),
                                         scales=inference_scales(self.cfg, *crop.shape[-2:]), flip=pm.flip,
                                         bg_pow=BG_POW)
        return probs / probs.sum(0, keepdim=True).clamp(min=1e-8)

    def _refine(self, crop: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return refine_with_pamr(crop[None], probs[None], dilations=PAMR_DILATIONS, num_iter=PAMR_ITER)[0]

    def _restricted(self, probs: torch.Tensor, tags: torch.Tensor) -> np.ndarray:
        probs = self.layout.to_dataset_order(probs.cpu(), dim=0)
        # Classes the crop is not tagged with stay impossible, whatever PAMR smeared into them.
        probs = probs * allowed_classes(tags, self.layout)[:, None, None]
        return (probs / probs.sum(0, keepdim=True).clamp(min=1e-8)).numpy()

    def segmenter_probabilities(self, image: np.ndarray) -> np.ndarray:
        """Softmax C×H×W of task i's segmenter on a whole tile (H×W×3 uint8), by sliding window."""
        ev = self.cfg.eval
        logits = sliding_window_logits(self.segmenter, image_to_tensor(image), self.source.classes.num_classes,
                                       ev.window_px, ev.stride_px, ev.batch_size, self.device)
        return logits.softmax(0).numpy()

    def _crops(self, crops: list[CropTag], with_labels: bool):
        """(index, crop H×W×3, crop tensor, tags, the crop's segmenter probabilities or None, its
        label or None) per crop, in order; one worker decodes the crops."""
        loader = SignalSafeDataLoader(GridCropDataset(self.source, crops, self.source.classes.num_classes),
                                      batch_size=None, num_workers=1)
        tile_id, tile_probs, tile_label = None, None, None
        with torch.inference_mode():
            for index, crop, tags in loader:
                crop, tags, tag = np.asarray(crop), torch.as_tensor(tags), crops[int(index)]
                if tag.tile_id != tile_id:  # crops come tile by tile: per-tile work once per tile
                    tile_id = tag.tile_id
                    if self.segmenter is not None:
                        tile_probs = self.segmenter_probabilities(self.source.image(tile_id))
                    if with_labels:
                        tile_label = self.source.label(tile_id)
                window = (slice(tag.y, tag.y + tag.h), slice(tag.x, tag.x + tag.w))
                yield (int(index), crop, image_to_tensor(crop), tags,
                       None if tile_probs is None else tile_probs[(slice(None), *window)],
                       None if tile_label is None else tile_label[window])

    def _fused(self, probs: np.ndarray, segmenter_probs: np.ndarray | None, tags: torch.Tensor) -> np.ndarray:
        if segmenter_probs is None:
            return probs
        return fuse_with_segmenter(probs, segmenter_probs, allowed_classes(tags, self.layout).numpy(),
                                   self.cfg.weak.pseudo.segmenter_weight, abstain=self.abstain)

    def predictions(self, crops: list[CropTag], crf: bool, weak_cm: np.ndarray | None = None):
        """(index, crop, probabilities, whether to run the CRF) per crop, in order. `weak_cm`
        accumulates the weak model's own confusion against the ground truth."""
        classes = self.source.classes
        for index, crop, tensor, tags, segmenter_probs, label in self._crops(crops, weak_cm is not None):
            probs = self.weak_probabilities(tensor, tags)
            if weak_cm is not None:
                weak_cm += confusion_matrix(probs.argmax(0), label, classes.num_classes, classes.ignore_index)
            yield index, crop, self._fused(probs, segmenter_probs, tags), crf

    def compare_pamr(self, crops: list[CropTag], progress=None) -> dict:
        """Pre-CRF mIoU of the (fused) pseudo masks of labelled `crops` without and with PAMR."""
        classes = self.source.classes
        cms = {key: np.zeros((classes.num_classes,) * 2, np.int64) for key in ("without", "with")}
        for index, crop, tensor, tags, segmenter_probs, label in self._crops(crops, with_labels=True):
            if progress is not None:
                progress.update()
            tensor = tensor.to(self.device)
            scores = self._weak_scores(tensor, tags)
            for key, probs in (("without", scores), ("with", self._refine(tensor, scores))):
                fused = self._fused(self._restricted(probs, tags), segmenter_probs, tags)
                cms[key] += confusion_matrix(fused.argmax(0), label, classes.num_classes, classes.ignore_index)
        return {f"miou_{key}_pamr": segmentation_metrics(cm, classes.names, classes.in_mean)["miou"]
                for key, cm in cms.items()}


def _crf_job(args):
    index, crop, probs, crf = args
    refined = dense_crf(crop, probs) if crf else probs
    return index, probs, refined


def _tiles(results, crops: list[CropTag], source: TileSource):
    """(tile_id, TileAccumulator) per tile, from per-crop results that arrive tile by tile."""
    current, accumulator = None, None
    for index, raw, crf in results:
        tag = crops[index]
        if tag.tile_id != current:
            if accumulator is not None:
                yield current, accumulator
            height, width = source.image(tag.tile_id).shape[:2]
            current, accumulator = tag.tile_id, TileAccumulator.empty(source.classes.num_classes, height, width)
        accumulator.add(tag, raw, crf)
    if accumulator is not None:
        yield current, accumulator


def pseudo_mask_samples(source: TileSource, split: Split, pm_dir: Path, count: int):
    """(tile, image, pseudo mask, ground truth) for the first `count` N2 tiles, for triptychs; the
    ground truth is None for an image tagged without a mask (`weak.tags_file`)."""
    samples = []
    for tile_id in list(split.tagged)[:count]:
        gt = source.label(tile_id) if source.tile(tile_id).label_path is not None else None
        samples.append((tile_id, source.image(tile_id), read_index_png(pm_dir / f"{tile_id}.png"), gt))
    return samples
