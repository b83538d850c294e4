"""The class probabilities behind the pseudo masks, crop by crop, and their tiles (task ii).

`CropPredictor` runs the single-stage model on a grid crop (multi-scale + flip, restricted to
the crop's tags, background power, PAMR) and fuses it with task i's segmenter where that takes
part; `TileMasks` sends the crops' dense CRFs to worker processes and averages the overlapping
crops of a tile into one mask. What to switch on (PAMR, CRF, abstaining classes) is decided
elsewhere (`pseudo_masks.calibrate_masks`): this module only carries the decisions out, the same
way for the calibration tiles and for N2.
"""

from __future__ import annotations

import multiprocessing

import numpy as np
import torch

from wsseg.core.evaluate import sliding_window_logits
from wsseg.core.metrics import confusion_matrix, segmentation_metrics
from wsseg.core.progress import progress_bar
from wsseg.core.signals import leave_stop_signals_to_parent, stop_signals_held
from wsseg.core.workers import SignalSafeDataLoader
from wsseg.datasets.base import TileSource
from wsseg.datasets.tagged_crops import GridCropDataset
from wsseg.datasets.tags import CropTag, compute_crop_tags
from wsseg.datasets.tensors import image_to_tensor
from wsseg.models.single_stage import PAMR_DILATIONS, PAMR_ITER, ClassLayout, SingleStageSegmenter
from wsseg.pipeline.config import Config
from wsseg.pipeline.data import tag_grid_px
from wsseg.pseudo_labels.crf import dense_crf
from wsseg.pseudo_labels.fusion import allowed_classes, fuse_with_segmenter
from wsseg.pseudo_labels.pamr import refine_with_pamr
from wsseg.pseudo_labels.tiles import TileAccumulator, confident_labels

# The background channel raised to this power before the argmax (it wins at object borders
# otherwise): the published inference's 3 (Araslanov & Roth, CVPR 2020).
BG_POW = 3.0


def crops_in_order(cfg: Config, source: TileSource, crop_tags: list[CropTag], tile_order: list[str]) -> list[CropTag]:
    """The grid crops of the tiles in `tile_order`, tile by tile; tags of tiles without any are computed."""
    tagged_tiles = {t.tile_id for t in crop_tags}
    extra = compute_crop_tags(source, [t for t in tile_order if t not in tagged_tiles],
                              tag_grid_px(cfg))
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
        # Each scale also flipped left-right, as the published inference does.
        probs = self.model.predict_masks(crop, tags=self.layout.scored_tags(tags),
                                         scales=inference_scales(self.cfg, *crop.shape[-2:]), flip=True,
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


class TileMasks:
    """Pseudo masks tile by tile from a `CropPredictor`: the crops are predicted in this process,
    their CRFs run in a pool of `processes` (none below 2), in order, and the overlapping crops of
    a tile are averaged. One pool and one progress bar (of `total` crops) serve the calibration
    tiles and N2 alike; leaving the `with` block closes them, and a stop (Ctrl-C, SIGTERM, an
    error) drops the CRFs still queued rather than wait for every one of them."""

    def __init__(self, predictor: CropPredictor, source: TileSource, processes: int, total: int):
        self.predictor, self.source = predictor, source
        self.pool = None
        if processes > 1:
            with stop_signals_held():
                self.pool = multiprocessing.get_context("spawn").Pool(processes,
                                                                      initializer=leave_stop_signals_to_parent)
        self.progress = progress_bar(total=total, desc="pseudo masks")

    def __enter__(self) -> TileMasks:
        return self

    def __exit__(self, error_type, *_) -> None:
        self.progress.close()
        if self.pool is not None:
            if error_type is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()

    def __call__(self, crops: list[CropTag], crf: bool, threshold: float, weak_cm: np.ndarray | None = None):
        """(tile_id, raw, refined, labels) per tile of `crops`: the averaged probabilities before
        and after the CRF, and the labels confident above `threshold` (`confident_labels`)."""
        jobs = self.predictor.predictions(crops, crf, weak_cm)
        results = self.pool.imap(_crf_job, jobs, chunksize=2) if self.pool else map(_crf_job, jobs)
        for tile_id, accumulator in _tiles(_counted(results, self.progress), crops, self.source):
            raw, refined = accumulator.means()
            yield tile_id, raw, refined, confident_labels(raw, refined, threshold, self.source.classes.ignore_index)


def _counted(results, progress):
    for result in results:
        progress.update()
        yield result


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
