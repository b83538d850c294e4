"""From the probabilities of overlapping crops to one pseudo mask per tile.

The fixed-grid crops of a tile overlap where the tile is not a multiple of the crop size; each
pixel takes the mean of the crops that cover it, before and after the CRF, and only its
confident pixels keep a label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsseg.datasets.base import IGNORE_INDEX
from wsseg.datasets.tags import CropTag


@dataclass
class TileAccumulator:
    """Sums of crop probabilities (C×H×W) before (`raw`) and after (`crf`) the CRF, and coverage."""

    raw: np.ndarray
    crf: np.ndarray
    count: np.ndarray

    @classmethod
    def empty(cls, num_classes: int, height: int, width: int) -> TileAccumulator:
        return cls(np.zeros((num_classes, height, width), np.float32), np.zeros((num_classes, height, width), np.float32),
                   np.zeros((height, width), np.float32))

    def add(self, tag: CropTag, raw: np.ndarray, crf: np.ndarray) -> None:
        window = (slice(tag.y, tag.y + tag.h), slice(tag.x, tag.x + tag.w))
        self.raw[(slice(None), *window)] += raw
        self.crf[(slice(None), *window)] += crf
        self.count[window] += 1

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel mean probabilities (raw, crf); a pixel no crop covered stays 0."""
        count = np.maximum(self.count, 1)[None]
        return self.raw / count, self.crf / count


def confident_labels(raw: np.ndarray, crf: np.ndarray, threshold: float,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """uint8 H×W: the CRF's class where the pre-CRF probability is above `threshold` and the CRF
    kept the pre-CRF class; `ignore_index` elsewhere.

    The CRF posterior is peaked almost everywhere, so confidence is read from the pre-CRF
    probabilities, and a pixel whose class the CRF changed is left unlabelled.
    """
    labels = crf.argmax(0).astype(np.uint8)
    labels[(raw.max(0) <= threshold) | (raw.argmax(0) != labels)] = ignore_index
    return labels
