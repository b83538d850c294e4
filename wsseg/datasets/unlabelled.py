"""Batches for the tag-free semi-supervised arm: each sample pairs a labelled crop with an
unlabelled one, so that every batch holds as many of each and its labelled half is the batch task
i would draw (same crops, same order, same seed).

The unlabelled crop comes in two views: the weak one (crop and geometric augmentation only),
whose prediction gives the targets, and the strong one (`augment.strong_colour_view`), which
learns them; plus a CutMix box (top, left, h, w; all −1 for none) in which the strong view of the
next unlabelled crop of the batch is pasted (UniMatch, Yang et al. 2023). Given the N2 tiles'
tags (task ii online), it also says what they tell of the crop's window: per class positive,
negative or unknown (`TagGrid.window_targets`).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from wsseg.datasets.augment import random_cutout_box, strong_colour_view
from wsseg.datasets.base import DatasetError
from wsseg.datasets.crops import RandomCropDataset
from wsseg.datasets.tags import TagGrid

NO_BOX = (-1, -1, -1, -1)


class UnlabelledViews(Dataset):
    """`RandomCropDataset` crops (built with `images_only`) → {"weak", "strong", "box"}, plus
    "tag_targets" (int8 per class) with a `tag_grid`."""

    def __init__(self, crops: RandomCropDataset, cutmix_p: float = 0.5, tag_grid: TagGrid | None = None):
        if not crops.images_only:
            raise DatasetError("UnlabelledViews: build its crops with images_only, so that no label is ever read")
        if tag_grid is not None:
            missing = sorted(set(crops.tile_ids) - set(tag_grid.tile_ids))
            if missing:
                raise DatasetError(f"UnlabelledViews: no crop tags for tiles {missing[:5]}"
                                   f"{f' (and {len(missing) - 5} more)' if len(missing) > 5 else ''}")
        self.crops, self.cutmix_p, self.tag_grid = crops, float(cutmix_p), tag_grid

    def __len__(self) -> int:
        return len(self.crops)

    def set_epoch(self, epoch: int) -> None:
        self.crops.set_epoch(epoch)

    def tile_id_of(self, index: int) -> str:
        return self.crops.tile_id_of(index)

    def __getitem__(self, index: int) -> dict:
        weak, _, window, rng = self.crops.sample(index)
        strong = strong_colour_view(weak, rng)
        mix = rng.random() < self.cutmix_p
        box = random_cutout_box(weak.shape[-2], weak.shape[-1], rng)
        views = {"weak": weak, "strong": strong,
                 "box": torch.tensor(box if mix and box is not None else NO_BOX, dtype=torch.int64)}
        if self.tag_grid is not None:
            views["tag_targets"] = torch.from_numpy(self.tag_grid.window_targets(*window))
        return views


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
