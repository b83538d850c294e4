"""The DataLoader `fit` trains from, and the epoch that every sample is made for.

Workers persist between epochs (and keep their tile caches), so the epoch travels with each
sample's key instead of being set on the workers' copies of the dataset; crops and their
augmentations are then a function of (seed, epoch, index), and a resumed run sees the samples an
uninterrupted one does. The batch sampler also remembers the indices it hands out, so that a
non-finite loss can name the tiles of its batch.
"""

from __future__ import annotations

import random
from collections import deque

import numpy as np
import torch

from wsseg.core.workers import SignalSafeDataLoader


class _EpochBatchSampler:
    """Batches of (epoch, index) keys: each sample carries the epoch it is drawn for to the
    process that makes it, so DataLoader workers can persist between epochs (and keep their tile
    caches) and still make each epoch's crops. It also remembers the index lists it hands out,
    so that the loop can name the samples of the batch it is on: batches come back in the order
    their indices left."""

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler
        self.epoch = 0
        self.issued: deque[list[int]] = deque()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        self.issued.clear()
        for indices in self.batch_sampler:
            self.issued.append(list(indices))
            yield [(self.epoch, index) for index in indices]

    def __len__(self) -> int:
        return len(self.batch_sampler)


class _EpochKeyed(torch.utils.data.Dataset):
    """`dataset` read with (epoch, index) keys: moves it to the key's epoch (`set_epoch`) first.
    Everything else (`tile_id_of`, `set_epoch` in the main process, ...) is the dataset's own."""

    def __init__(self, dataset):
        self.dataset = dataset
        self._epoch = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if epoch != self._epoch:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            _seed_worker_for_epoch(epoch)
        self._epoch = epoch
        return self.dataset[index]

    def __getattr__(self, name):
        if name == "dataset":  # not yet set while unpickling in a worker
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _seed_worker_for_epoch(epoch: int) -> None:
    """In a DataLoader worker, global random streams that depend on the worker and the epoch
    only: what a worker started afresh each epoch would draw, so a dataset that draws from
    them gives a resumed run the samples of an uninterrupted one. Not in the main process,
    whose streams `fit` saves and restores."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    seed = (info.seed + 1_000_003 * epoch) % 2 ** 63
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def training_loader(dataset, batch_size: int, sampler=None, *, drop_last: bool = True, **loader_options):
    """A DataLoader for `fit`: without `sampler` the samples are reshuffled every epoch from
    torch's global generator, as `shuffle=True` does; workers persist between epochs, each sample
    made for the epoch `fit` is in (datasets whose crops depend on the epoch have `set_epoch`);
    a batch whose loss is not finite is named by its samples; workers leave Ctrl-C and SIGTERM
    to this process, so that a signal to the whole process group stops at a step boundary as one
    to this process does. `loader_options` go to the DataLoader (num_workers, pin_memory, ...)."""
    sampler = sampler if sampler is not None else torch.utils.data.RandomSampler(dataset)
    batches = _EpochBatchSampler(torch.utils.data.BatchSampler(sampler, batch_size, drop_last=drop_last))
    loader_options.setdefault("persistent_workers", loader_options.get("num_workers", 0) > 0)
    # The workers' seeds from a generator of their own, not from torch's global stream: a loader
    # whose workers start at epoch k of a resumed run then leaves that stream where an
    # uninterrupted run has it.
    loader_options.setdefault("generator", torch.Generator().manual_seed(torch.initial_seed()))
    return SignalSafeDataLoader(_EpochKeyed(dataset), batch_sampler=batches, **loader_options)


def describe_samples(dataset, indices: list[int], limit: int = 8) -> str:
    """The tiles behind the samples `indices` of `dataset` (or their indices, if it cannot say)."""
    describe = getattr(dataset, "tile_id_of", None)
    names = [str(describe(i)) if describe else f"#{i}" for i in indices[:limit]]
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return ", ".join(names) + more


def set_loader_epoch(loader, epoch: int) -> None:
    """Move `loader` (its sampler, batch sampler and dataset) to `epoch`, as `fit` does before each.

    Crops and augmentations are a function of (seed, epoch, index): resumed runs see the same data."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "batch_sampler", batch_sampler)
    # A DistributedSampler reshuffles by epoch; an _EpochBatchSampler tells each sample its epoch.
    for obj in (getattr(loader, "sampler", None), getattr(inner, "sampler", None), batch_sampler,
                getattr(loader, "dataset", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
