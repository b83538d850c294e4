"""Batches for the tag-free semi-supervised arm: each sample pairs a labelled crop with an
unlabelled one, so that every batch holds as many of each and its labelled half is the batch task
i would draw (same crops, same order, same seed).

The unlabelled crop comes in two views: the weak one (crop and geometric augmentation only),
whose prediction gives the targets, and the strong one (`augment.strong_colour_view`), which
learns them; plus a CutMix box (top, left, h, w; all −1 for none) in which the strong view of the
next unlabelled crop of the batch is pasted (UniMatch, Yang et al. 2023).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from wsseg.datasets.augment import random_cutout_box, strong_colour_view
from wsseg.datasets.base import DatasetError
from wsseg.datasets.crops import RandomCropDataset

NO_BOX = (-1, -1, -1, -1)


class UnlabelledViews(Dataset):
    """`RandomCropDataset` crops (built with `images_only`) → {"weak", "strong", "box"}."""

    def __init__(self, crops: RandomCropDataset, cutmix_p: float = 0.5):
        if not crops.images_only:
            raise DatasetError("UnlabelledViews: build its crops with images_only, so that no label is ever read")
        self.crops, self.cutmix_p = crops, float(cutmix_p)

    def __len__(self) -> int:
        return len(self.crops)

    def set_epoch(self, epoch: int) -> None:
        self.crops.set_epoch(epoch)

    def tile_id_of(self, index: int) -> str:
        return self.crops.tile_id_of(index)

    def __getitem__(self, index: int) -> dict:
        weak, _, _, rng = self.crops.sample(index)
        strong = strong_colour_view(weak, rng)
        mix = rng.random() < self.cutmix_p
        box = random_cutout_box(weak.shape[-2], weak.shape[-1], rng)
        return {"weak": weak, "strong": strong,
                "box": torch.tensor(box if mix and box is not None else NO_BOX, dtype=torch.int64)}


class PairedCrops(Dataset):
    """Sample i of `labelled` (a tuple: image, mask, weight, ...) followed by sample i of
    `unlabelled` (an `UnlabelledViews` dict), for as many samples as `labelled` has."""

    def __init__(self, labelled: Dataset, unlabelled: UnlabelledViews):
        if len(unlabelled) < len(labelled):
            raise DatasetError(f"PairedCrops: {len(unlabelled)} unlabelled crops for {len(labelled)} labelled ones")
        self.labelled, self.unlabelled = labelled, unlabelled

    def __len__(self) -> int:
        return len(self.labelled)

    def set_epoch(self, epoch: int) -> None:
        for part in (self.labelled, self.unlabelled):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def tile_id_of(self, index: int) -> str:
        return f"{self.labelled.tile_id_of(index)} + {self.unlabelled.tile_id_of(index)}"

    def __getitem__(self, index: int):
        return (*self.labelled[index], self.unlabelled[index])
