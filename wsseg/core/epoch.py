"""One pass over the training data: the step, AMP, the non-finite-loss policy, and where a
partial epoch stands.

A partial epoch (stopped by Ctrl-C or SIGTERM) is continued by `train_one_epoch` itself, from
the RNG state the epoch began with, so `fit` resumes it as any other epoch.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch

from wsseg.core.checkpoint import rng_state, set_rng_state
from wsseg.core.distributed import DistInfo
from wsseg.core.interruptions import _any_rank, _StopRequests
from wsseg.core.loaders import _EpochBatchSampler, describe_samples
from wsseg.core.progress import progress_bar

LossFn = Callable[[torch.nn.Module, object, int], "tuple[torch.Tensor, dict[str, float]]"]

NONFINITE_ACTIONS = ("stop", "skip")


class NonFiniteLoss(FloatingPointError):
    pass


@dataclass
class EpochProgress:
    """Where an epoch stands: steps done, the running sums of its scalars, and the RNG state it
    began with (the data order is drawn from it when the loader starts)."""

    steps_done: int = 0
    totals: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    start_rng: dict | None = None
    skipped_nonfinite: int = 0

    def as_dict(self) -> dict:
        return {"steps_done": self.steps_done, "totals": self.totals, "counts": self.counts,
                "start_rng": self.start_rng, "skipped_nonfinite": self.skipped_nonfinite}

    @classmethod
    def from_dict(cls, state: dict) -> EpochProgress:
        return cls(int(state["steps_done"]), dict(state["totals"]), dict(state["counts"]), state["start_rng"],
                   int(state.get("skipped_nonfinite", 0)))


def train_one_epoch(model, loader, optimizer, scheduler, compute_loss: LossFn, epoch: int, device: torch.device,
                    amp_dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None, writer=None,
                    global_step: int = 0, desc: str = "train", show_progress: bool = True,
                    progress: EpochProgress | None = None, stop: _StopRequests | None = None,
                    on_nonfinite: str = "stop", dist_info: DistInfo = DistInfo(),
                    log: Callable[[str], None] = print,
                    after_steps: tuple[int, Callable[[int, float], None]] | None = None
                    ) -> tuple[dict, int, EpochProgress, str | None]:
    """One pass over `loader`; each scalar is averaged over the steps that reported it (a loss
    term of the N2 crops, say, is absent from a batch that drew none).

    `progress` of a partial epoch continues it: the loader restarts from the RNG state the epoch
    began with, so it draws the same order, and skips the steps already done. Returns the
    epoch's scalars, the global step, the epoch's progress and the name of the signal that
    stopped it early (None when it ran to the end). `after_steps` (k, callback): after the k-th
    step of this call, callback(k, seconds since the first step began) (the stage's time estimate)."""
    if on_nonfinite not in NONFINITE_ACTIONS:
        raise ValueError(f"on_nonfinite {on_nonfinite!r}: expected one of {', '.join(NONFINITE_ACTIONS)}")
    model.train()
    progress = progress or EpochProgress()
    stop = stop or _StopRequests()
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    recorder = loader.batch_sampler if isinstance(getattr(loader, "batch_sampler", None), _EpochBatchSampler) \
        else None
    if progress.steps_done:
        resumed_rng = rng_state()
        set_rng_state(progress.start_rng)
        batches = iter(loader)
        for _ in range(progress.steps_done):
            next(batches)
            if recorder is not None:
                recorder.issued.popleft()
        set_rng_state(resumed_rng)
    else:
        progress.start_rng = rng_state()
        batches = iter(loader)
    bar = progress_bar(batches, enabled=show_progress, desc=f"{desc} epoch {epoch + 1}", leave=False,
                       total=len(loader), initial=progress.steps_done)
    stopped_by = None
    steps_here, first_step_started = 0, None
    for batch in bar:
        if first_step_started is None:
            first_step_started = time.perf_counter()
        indices = recorder.issued.popleft() if recorder is not None and recorder.issued else []
        with autocast:
            loss, scalars = compute_loss(model, batch, epoch)
        if not torch.isfinite(loss):
            terms = [k for k, v in scalars.items() if not math.isfinite(float(v))]
            message = (f"{desc}: the loss is {loss.item()} at epoch {epoch + 1}, step {progress.steps_done + 1} of "
                       f"{len(loader)} (global step {global_step + 1})"
                       + (f"; non-finite terms: {', '.join(terms)}" if terms else "")
                       + (f"; batch tiles: {describe_samples(loader.dataset, indices)}" if indices else ""))
            if on_nonfinite == "stop":
                raise NonFiniteLoss(f"{message}. The checkpoint of the last finished epoch is intact; set "
                                    f"train.on_nonfinite=skip to skip such steps, or lower train.lr")
            log(f"{message}: step skipped (train.on_nonfinite: skip)")
            progress.skipped_nonfinite += 1
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scalars = {"loss": loss.item(), **scalars}
            for key, value in scalars.items():
                progress.totals[key] = progress.totals.get(key, 0.0) + value
                progress.counts[key] = progress.counts.get(key, 0) + 1
            bar.set_postfix(loss=f"{scalars['loss']:.4f}")
            if writer is not None and (global_step + 1) % 10 == 0:
                for key, value in scalars.items():
                    writer.add_scalar(f"{desc}/{key}", value, global_step + 1)
                writer.add_scalar(f"{desc}/lr", optimizer.param_groups[0]["lr"], global_step + 1)
        # A skipped step still counts: the schedule and the data order stay those of a clean run.
        scheduler.step()
        global_step += 1
        progress.steps_done += 1
        steps_here += 1
        if after_steps is not None and steps_here == after_steps[0]:
            after_steps[1](steps_here, time.perf_counter() - first_step_started)
        if progress.steps_done < len(loader) and _any_rank(stop.signal_name is not None, dist_info, device):
            stopped_by = stop.signal_name or "a stop request on another process"
            break
    bar.close()
    stats = {key: value / progress.counts[key] for key, value in progress.totals.items()}
    return stats, global_step, progress, stopped_by
