"""Whole-tile evaluation: sliding-window inference and one confusion matrix over the test set.

As in the ISPRS 2D semantic labelling benchmark (Rottensteiner et al., ISPRS Annals 2012), tiles are
evaluated whole, edges included, by overlapping windows; the scores come from
a single confusion matrix summed over every evaluated tile (full ground truth, and the eroded
one where the dataset has it). Under torchrun each process predicts its share of the tiles and the
matrices are summed over the processes, so every process gets the one-process matrix exactly.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsseg.core.distributed import DistInfo, merge_over_ranks, sum_over_ranks
from wsseg.core.metrics import SCORE_BINS, confusion_matrix, max_f_measure, score_histograms, segmentation_metrics
from wsseg.core.progress import progress_bar
from wsseg.datasets.splits import abbreviated
from wsseg.datasets.tensors import image_to_tensor


def window_starts(length_px: int, window_px: int, stride_px: int) -> list[int]:
    """Start offsets of windows along one axis: a regular grid whose last window ends exactly at
    the edge, so the far border is covered without padding the tile up to a stride multiple."""
    if length_px <= window_px:
        return [0]
    starts = list(range(0, length_px - window_px, stride_px))
    starts.append(length_px - window_px)
    return starts


def _pad_to_window(image: torch.Tensor, window_px: int) -> torch.Tensor:
    """Pad bottom/right up to the window size. Reflection gives a conv net plausible context at
    the border; it needs the pad to be smaller than the side, so tiny images replicate instead."""
    _, h, w = image.shape
    pad_h, pad_w = max(0, window_px - h), max(0, window_px - w)
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(image[None], (0, pad_w, 0, pad_h), mode=mode)[0]


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def sliding_window_logits(
    model: torch.nn.Module,
    image: torch.Tensor,
    num_classes: int,
    window_px: int,
    stride_px: int,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Class logits C×H×W (float32, CPU) of a float 3×H×W image in [0, 1].

    Windows of `window_px` on a grid of step `stride_px` (last row/column flush with the
    bottom/right edge); overlapping logits are averaged. Only `batch_size` windows are on the
    device at a time, and the accumulators are C×H×W on the CPU, so memory follows the batch,
    not the tile. The model runs in eval mode under inference_mode; its previous train/eval
    mode is restored afterwards so validation inside a training loop leaves it as it was.
    `amp_dtype` (e.g. torch.bfloat16) enables autocast on the device's type.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3×H×W image tensor, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"expected a float image in [0, 1], got dtype {image.dtype}")
    if window_px < 1 or not 1 <= stride_px <= window_px:
        raise ValueError(f"need 1 <= stride_px <= window_px, got window {window_px}, stride {stride_px}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)

    _, height, width = image.shape
    padded = _pad_to_window(image, window_px)
    _, ph, pw = padded.shape
    win = window_px
    boxes = [(y, x) for y in window_starts(ph, win, stride_px) for x in window_starts(pw, win, stride_px)]

    logit_sum = torch.zeros(num_classes, ph, pw, dtype=torch.float32)
    hits = torch.zeros(1, ph, pw, dtype=torch.float32)
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast:
            for i in range(0, len(boxes), batch_size):
                chunk = boxes[i:i + batch_size]
                batch = torch.stack([padded[:, y:y + win, x:x + win] for y, x in chunk]).to(device)
                logits = model(batch)
                if tuple(logits.shape) != (len(chunk), num_classes, win, win):
                    raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, expected "
                                     f"{(len(chunk), num_classes, win, win)}")
                logits = logits.float().cpu()
                for (y, x), window_logits in zip(chunk, logits):
                    logit_sum[:, y:y + win, x:x + win] += window_logits
                    hits[:, y:y + win, x:x + win] += 1
    finally:
        model.train(was_training)

    logit_sum /= hits  # the grid covers every pixel, so no count is zero
    return logit_sum[:, :height, :width].contiguous()


def predict_tile(
    model: torch.nn.Module,
    image: torch.Tensor | np.ndarray,
    num_classes: int,
    window_px: int,
    stride_px: int,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """uint8 H×W class map of one tile (argmax of `sliding_window_logits`).

    `image` is a float 3×H×W tensor in [0, 1] or a uint8 H×W×3 array as datasets return it.
    """
    if num_classes > 255:
        raise ValueError(f"{num_classes} classes do not fit a uint8 map with 255 reserved for ignore")
    if isinstance(image, np.ndarray):
        image = image_to_tensor(image)
    logits = sliding_window_logits(model, image, num_classes, window_px, stride_px, batch_size, device, amp_dtype)
    return logits.argmax(dim=0).to(torch.uint8).numpy()


@dataclass
class EvalResult:
    """One confusion matrix over all evaluated tiles (and one on eroded ground truth if present)."""

    cm: np.ndarray
    cm_eroded: np.ndarray | None = None
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    tile_ids: list[str] = field(default_factory=list)
    # `score_class`'s probability histograms (`metrics.score_histograms`), when one was asked for.
    score_class: str | None = None
    score_histograms: np.ndarray | None = None

    def metrics(self, classes) -> dict:
        """`segmentation_metrics` of `cm` for a ClassSpec, plus an "eroded" sub-dict when present.

        Each level also carries its "confusion_matrix" (C×C list, rows = ground truth): the
        saved metrics then hold everything needed to recompute any score, and `write_report`
        draws the confusion figure from it.
        """
        result = segmentation_metrics(self.cm, classes.names, classes.in_mean)
        result["confusion_matrix"] = self.cm.tolist()
        if self.cm_eroded is not None:
            result["eroded"] = segmentation_metrics(self.cm_eroded, classes.names, classes.in_mean)
            result["eroded"]["confusion_matrix"] = self.cm_eroded.tolist()
        if self.score_histograms is not None:
            result["max_f"] = {"class": self.score_class, **max_f_measure(self.score_histograms)}
        return result


def evaluate_tiles(
    model: torch.nn.Module,
    source,
    tile_ids: Sequence[str],
    window_px: int,
    stride_px: int,
    batch_size: int,
    device: torch.device | str | None,
    amp_dtype: torch.dtype | None = None,
    keep_predictions: Iterable[str] = (),
    progress: bool = True,
    score_class: str | None = None,
    dist: DistInfo = DistInfo(),
) -> EvalResult:
    """Predict whole tiles of a TileSource and accumulate their confusion matrices.

    `score_class` (a class name) also scores that class's softmax probability at every threshold
    (`max_f` in the metrics: KITTI Road's MaxF, precision, recall, average precision).

    Under torchrun (`dist`) every process must call this with the same tiles and the same model:
    each predicts every `world_size`-th tile, and each gets the confusion matrices (and score
    histograms) summed over all and the kept predictions of all. Integer counts sum exactly, so
    the result is that of one process, whatever the number of processes.

    Eroded ground truth is scored when the source has it for every evaluated tile; if only some
    tiles have it, a warning is given and no eroded scores are made, because a mean over a subset
    of tiles would be reported as if it covered them all.
    """
    classes = source.classes
    num_classes = classes.num_classes
    tile_ids = list(tile_ids)
    keep = set(keep_predictions)
    missing = keep - set(tile_ids)
    if missing:
        raise ValueError(f"keep_predictions names tiles that are not evaluated: {sorted(missing)}")

    use_eroded = source.has_eroded
    if use_eroded:
        lacking = [t for t in tile_ids if source.tile(t).eroded_label_path is None]
        if lacking:
            warnings.warn(f"{source.name}: {len(lacking)} of {len(tile_ids)} tiles have no eroded ground truth "
                          f"({abbreviated(lacking)}); eroded scores skipped")
            use_eroded = False

    if score_class is not None and score_class not in classes.names:
        raise ValueError(f"score_class {score_class!r} is not a class of {source.name} "
                         f"({', '.join(classes.names)})")
    cm = np.zeros((num_classes, num_classes), np.int64)
    cm_eroded = np.zeros_like(cm) if use_eroded else None
    histograms = np.zeros((2, SCORE_BINS), np.int64) if score_class is not None else None
    predictions: dict[str, np.ndarray] = {}
    # Round robin: neighbouring tiles, often of similar size, go to different processes.
    own_tiles = tile_ids[dist.rank::dist.world_size]
    for tile_id in progress_bar(own_tiles, enabled=progress, desc="evaluate", unit="tile"):
        if score_class is None:
            pred = predict_tile(model, source.image(tile_id), num_classes, window_px, stride_px,
                                batch_size, device, amp_dtype)
        else:
            logits = sliding_window_logits(model, image_to_tensor(source.image(tile_id)), num_classes, window_px,
                                           stride_px, batch_size, device, amp_dtype)
            pred = logits.argmax(dim=0).to(torch.uint8).numpy()
            positive = classes.names.index(score_class)
            probability = torch.softmax(logits, dim=0)[positive].numpy()
            histograms += score_histograms(probability, source.label(tile_id), positive, classes.ignore_index)
        for eroded in ((False, True) if use_eroded else (False,)):
            label = source.label(tile_id, eroded=eroded)
            if label.shape != pred.shape:
                raise ValueError(f"tile {tile_id!r}: {'eroded ' if eroded else ''}label shape {label.shape} "
                                 f"!= image shape {pred.shape}")
            tile_cm = confusion_matrix(pred, label, num_classes, classes.ignore_index)
            if eroded:
                cm_eroded += tile_cm
            else:
                cm += tile_cm
        if tile_id in keep:
            predictions[tile_id] = pred
    cm = sum_over_ranks(cm, dist)
    if cm_eroded is not None:
        cm_eroded = sum_over_ranks(cm_eroded, dist)
    if histograms is not None:
        histograms = sum_over_ranks(histograms, dist)
    if keep:
        predictions = merge_over_ranks(predictions, dist)
    return EvalResult(cm=cm, cm_eroded=cm_eroded, predictions=predictions, tile_ids=tile_ids,
                      score_class=score_class, score_histograms=histograms)
