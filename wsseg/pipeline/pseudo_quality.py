"""What the pseudo masks are worth, measured where pixel labels exist: class precision on the
calibration tiles, the CRF's effect there, and the N2 masks against their ground truth before
CRF, after CRF and on the confident pixels. Nothing measured here reaches training but the
decision whether to keep the CRF."""

from __future__ import annotations

import logging

import numpy as np

from wsseg.core.metrics import class_precision, confusion_matrix, segmentation_metrics
from wsseg.datasets.base import ClassSpec

log = logging.getLogger(__name__)


class PseudoMaskQuality:
    """Class precision on the calibration tiles, and the quality of the N2 masks against ground
    truth where there is any: before CRF, after CRF, and confident pixels."""

    def __init__(self, classes: ClassSpec):
        self.classes = classes
        shape = (classes.num_classes,) * 2
        self.calibration_cm = np.zeros(shape, np.int64)
        self.cms = {name: np.zeros(shape, np.int64) for name in ("raw", "crf", "final")}
        self.labelled_px = self.total_px = 0
        self.tiles_with_ground_truth = 0
        self.pixels_per_class = np.zeros(classes.num_classes, np.int64)
        self.calibration_argmax_cms = {name: np.zeros(shape, np.int64) for name in ("raw", "crf")}
        self.crf_calibration: dict | None = None

    def _cm(self, prediction: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
        return confusion_matrix(prediction, ground_truth, self.classes.num_classes, self.classes.ignore_index)

    def _only_labelled(self, labels: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
        return np.where(labels == self.classes.ignore_index, self.classes.ignore_index, ground_truth)

    def calibrate(self, labels: np.ndarray, ground_truth: np.ndarray, raw: np.ndarray, crf: np.ndarray) -> None:
        self.calibration_cm += self._cm(labels, self._only_labelled(labels, ground_truth))
        self.calibration_argmax_cms["raw"] += self._cm(raw.argmax(0), ground_truth)
        self.calibration_argmax_cms["crf"] += self._cm(crf.argmax(0), ground_truth)

    def crf_decision(self) -> bool:
        """Whether the CRF raised mIoU on the calibration tiles (else it is switched off)."""
        raw, crf = (segmentation_metrics(self.calibration_argmax_cms[k], self.classes.names,
                                         self.classes.in_mean)["miou"] for k in ("raw", "crf"))
        self.crf_calibration = {"miou_without_crf": raw, "miou_with_crf": crf}
        keep = crf > raw
        log.info("pseudo masks: the CRF %s (calibration mIoU %.4f without, %.4f with)",
                 "stays on" if keep else "is switched off for the N2 masks", raw, crf)
        return bool(keep)

    def measure(self, labels: np.ndarray, raw: np.ndarray, crf: np.ndarray, ground_truth: np.ndarray | None) -> None:
        self.labelled_px += int((labels != self.classes.ignore_index).sum())
        self.total_px += labels.size
        self.pixels_per_class += np.bincount(labels.ravel(), minlength=256)[:self.classes.num_classes]
        if ground_truth is not None:
            self.tiles_with_ground_truth += 1
            self.cms["raw"] += self._cm(raw.argmax(0), ground_truth)
            self.cms["crf"] += self._cm(crf.argmax(0), ground_truth)
            self.cms["final"] += self._cm(labels, self._only_labelled(labels, ground_truth))

    def calibration_precision(self) -> dict[str, float]:
        """Per class, the precision of the confident pixels on the calibration tiles."""
        return dict(zip(self.classes.names, class_precision(self.calibration_cm)))

    def report(self, tagged_classes: list[int], calibration_precision: dict | None = None,
               crf_calibration: dict | None = None, **settings) -> dict:
        """The quality report; `tagged_classes`: the classes the N2 crop tags name. The N2 masks'
        mIoUs (`miou_raw`, `miou_crf`, `miou_final`, `per_class`) are there only when some N2 tile
        has ground truth (`tiles_with_ground_truth`); images tagged without a mask have none, and
        their masks are then judged by the calibration tiles alone. `calibration_precision` and
        `crf_calibration`: the figures of a calibration measured by another instance (a
        `pseudo_masks.MaskPlan`'s), in place of this one's."""
        names = self.classes.names
        if calibration_precision is None:
            calibration_precision = self.calibration_precision()
        if crf_calibration is None:
            crf_calibration = self.crf_calibration
        report = {"coverage": self.labelled_px / max(1, self.total_px), **settings,
                  "tiles_with_ground_truth": self.tiles_with_ground_truth,
                  "calibration_precision": calibration_precision,
                  "classes_never_labelled": [names[c] for c in tagged_classes if self.pixels_per_class[c] == 0]}
        if crf_calibration is not None:
            report["crf_calibration"] = crf_calibration
        if self.cms["raw"].sum():
            stages = {name: segmentation_metrics(cm, names, self.classes.in_mean) for name, cm in self.cms.items()}
            report.update({f"miou_{name}": stages[name]["miou"] for name in stages})
            report["per_class"] = {
                name: {f"{key}_{stage}": stages[stage]["per_class"][name][key] for stage in stages
                       for key in ("iou", "precision")}
                for name in names}
        return report
