"""The skeleton every training stage shares, in the order of torchvision's segmentation reference
(`references/segmentation/train.py`): data → model → optimizer → fit → evaluate.

A stage (the segmenter, the single-stage model, a fine-tune) states only what is its own: its
dataset, model, loss, optimizer and validation. `Stage` does the rest the same way for all:
device and autocast precision, seeds, channels-last, the DistributedDataParallel wrap under
torchrun (with SyncBatchNorm if asked), the DataLoader (with a DistributedSampler), TensorBoard
and the `fit` loop with its checkpoints and resume.

    with Stage(stage_dir, device="auto", precision="fp32", seed=0, dist=dist) as stage:
        loader = stage.loader(dataset, batch_size)                          # data
        model = stage.prepare(build_model())                                # model
        optimizer = torch.optim.AdamW(unwrap(model).parameters())           # optimizer
        history = stage.fit(model, loader, optimizer, scheduler, loss, 10)  # fit
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from wsseg.core.checkpoint import unwrap
from wsseg.core.distributed import DistInfo, autocast_dtype, barrier, broadcast_buffers, choose_device
from wsseg.core.epoch import LossFn
from wsseg.core.loaders import training_loader
from wsseg.core.precision import resolve_precision
from wsseg.core.train import fit

log = logging.getLogger(__name__)


def sync_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with SyncBatchNorm for every BatchNorm. timm's BatchNormAct2d (EfficientNet,
    MobileNetV3 encoders) applies its activation inside the norm, which torch's converter would
    silently drop; timm's own converter keeps it."""
    try:
        from timm.layers import BatchNormAct2d, convert_sync_batchnorm
    except ImportError:  # no timm, so no timm layer in the model
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if any(isinstance(m, BatchNormAct2d) for m in model.modules()):
        return convert_sync_batchnorm(model)
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


class Stage:
    """Where and how one training stage runs, and its run folder `stage_dir`.

    Seeds torch and numpy with `seed` when created: build the model inside the stage, so that
    its initialisation, and every random draw after it, follow from the seed alone.
    `sync_bn`: under torchrun, BatchNorm statistics over the batches of all processes (CUDA only).
    `compile`: the model runs through torch.compile.
    `precision` "auto" is decided in `prepare`, by timing the model (`core.precision`); the
    decision is cached in `precision_cache_dir` (default: the stage folder).
    """

    def __init__(self, stage_dir: Path, *, device: str = "auto", precision: str = "fp32",
                 channels_last: bool = False, seed: int = 0, workers: int = 2, dist: DistInfo = DistInfo(),
                 config: dict | None = None, resume: bool = False, checkpoint_extras: dict | None = None,
                 on_nonfinite: str = "stop", sync_bn: bool = False, precision_cache_dir: Path | None = None,
                 compile: bool = False):
        self.stage_dir = Path(stage_dir)
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        self.name = self.stage_dir.name
        self.dist = dist
        self.device = choose_device(device, dist)
        self.precision = precision
        self.precision_cache_dir = Path(precision_cache_dir) if precision_cache_dir is not None else self.stage_dir
        # Known once `prepare` has timed the model when the precision is "auto".
        self.amp_dtype = autocast_dtype(precision, self.device) if precision != "auto" else None
        self.channels_last = channels_last
        self.sync_bn = sync_bn
        self.compile = compile
        self.seed = seed
        self.workers = workers
        self.config = config or {}
        self.checkpoint_extras = checkpoint_extras or {}
        self.resume = resume
        self.on_nonfinite = on_nonfinite
        self._writer = None
        torch.manual_seed(seed)
        np.random.seed(seed)

    # ------------------------------------------------------------------------------- data
    def loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        """Batches of `dataset`, reshuffled every epoch; each process its own share under torchrun.

        A stage that draws its own samples passes `sampler` (seeded per process)."""
        if sampler is None and self.dist.enabled:
            sampler = DistributedSampler(dataset, seed=self.seed)
        return training_loader(dataset, batch_size, sampler, num_workers=self.workers,
                               pin_memory=self.device.type == "cuda")

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True)

    def images_to_device(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of input images on the device, in the memory format the model runs in."""
        images = self.to_device(images)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    # ------------------------------------------------------------------------------ model
    def prepare(self, model: torch.nn.Module, input_shape: tuple[int, ...] | None = None) -> torch.nn.Module:
        """`model` on the device, channels-last if asked, wrapped in DDP under torchrun (its
        BatchNorms synchronised with `sync_bn`). `input_shape` (N×C×H×W of a training batch) is
        what `precision: auto` times the model on."""
        if self.precision == "auto":
            if input_shape is None:
                raise ValueError(f"{self.name}: precision auto times the model on its training input; "
                                 f"pass input_shape to Stage.prepare")
            self.precision = resolve_precision("auto", model, tuple(input_shape), self.device,
                                               cache_dir=self.precision_cache_dir, channels_last=self.channels_last,
                                               dist=self.dist, what=self.name)
            self.amp_dtype = autocast_dtype(self.precision, self.device)
        if self.sync_bn and self.dist.enabled:
            if self.device.type != "cuda":
                # torch's SyncBatchNorm raises only at the first training step, deep in the stack.
                raise ValueError(f"train.sync_bn needs CUDA devices (torch's SyncBatchNorm does not run on "
                                 f"{self.device.type}); set train.sync_bn: false")
            # The same weights and running statistics under other class names: checkpoints still
            # load into the plain model.
            model = sync_batch_norms(model)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            # In place (nn.Module.compile): the state dict keeps its keys, so checkpoints do not
            # depend on whether the run compiled.
            model.compile()
        if self.dist.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return model

    # -------------------------------------------------------------------------------- fit
    @property
    def writer(self):
        """The stage's TensorBoard writer (`stage_dir/tb`); None outside the main process."""
        if self._writer is None and self.dist.is_main:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.stage_dir / "tb"))
        return self._writer

    def fit(self, model: torch.nn.Module, loader: DataLoader, optimizer, scheduler, compute_loss: LossFn,
            epochs: int, validate: Callable[[torch.nn.Module, int], dict] | None = None,
            run_dir: Path | None = None, desc: str | None = None, validate_every: int = 1,
            max_minutes: float | None = None, companions: dict[str, torch.nn.Module] | None = None) -> list[dict]:
        """`core.train.fit` with this stage's device, precision, processes, config and resume;
        checkpoints go to `run_dir` (default: the stage folder), with the stage's `checkpoint_extras`.
        `max_minutes`: train only as many of the `epochs` as fit in that time (`fit`'s time budget).

        Under torchrun every process validates, and ends holding, the weights rank 0 saves, and
        returns only once rank 0 has written its checkpoints, so that any process may read them."""
        if self.precision == "auto":
            raise RuntimeError(f"{self.name}: precision auto is decided in Stage.prepare; prepare the model first")

        def validate_rank0_weights(model, epoch):
            broadcast_buffers(unwrap(model), self.dist)
            return validate(model, epoch)

        history = fit(model=model, loader=loader, optimizer=optimizer, scheduler=scheduler, compute_loss=compute_loss,
                      epochs=epochs, run_dir=run_dir or self.stage_dir, device=self.device, amp_dtype=self.amp_dtype,
                      validate=validate_rank0_weights if validate is not None else None, config=self.config,
                      resume=self.resume, dist_info=self.dist, writer=self.writer, desc=desc or self.name,
                      log=log.info, checkpoint_extras=self.checkpoint_extras, on_nonfinite=self.on_nonfinite,
                      validate_every=validate_every, time_budget_s=max_minutes * 60 if max_minutes is not None else None,
                      companions=companions)
        broadcast_buffers(unwrap(model), self.dist)
        barrier(self.dist)
        return history

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
