"""The training loop shared by every stage: optimiser, schedule, AMP, checkpoints, resume, logging.

A stage supplies `compute_loss(model, batch, epoch) -> (loss, scalars)` and optionally
`validate(model, epoch) -> scalars`; `fit` does the rest. Checkpoints are written after every
epoch (`last.pt`) and whenever the validation score improves (`best.pt`), so a killed run
continues from its last epoch with `resume=True` and ends with the same weights. A time budget
caps the epochs at what fits in it, measured on the first epoch, with the learning-rate decay
shortened to end where training now ends. Ctrl-C or
SIGTERM (to this process or to its whole group) stops at the next step boundary instead, with a
checkpoint of that step (`last.pt`, marked partial) from which a resumed run continues as if it
had never stopped.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
import warnings
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from wsseg.core.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap
from wsseg.core.distributed import DistInfo
from wsseg.core.progress import progress_bar
from wsseg.core.workers import SignalSafeDataLoader
from wsseg.datasets.base import IGNORE_INDEX

LossFn = Callable[[torch.nn.Module, object, int], "tuple[torch.Tensor, dict[str, float]]"]

NONFINITE_ACTIONS = ("stop", "skip")


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped training at a step boundary, after saving `checkpoint`."""

    def __init__(self, signal_name: str, checkpoint: Path, epoch: int, step: int, steps_per_epoch: int):
        self.signal_name, self.checkpoint = signal_name, checkpoint
        super().__init__(f"{signal_name}: stopped in epoch {epoch}, after step {step} of {steps_per_epoch}; "
                         f"saved {checkpoint}")


class NonFiniteLoss(FloatingPointError):
    pass


class _StopRequests:
    """SIGINT / SIGTERM turned into a flag that the loop reads at each step boundary: a step in
    flight finishes, so the checkpoint holds a consistent model and optimiser. A second Ctrl-C
    aborts at once (the default handler), for a step that never ends."""

    def __init__(self):
        self.signal_name: str | None = None

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)


@contextmanager
def stop_requests() -> Iterator[_StopRequests]:
    requests = _StopRequests()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield requests
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, requests._handle)
    try:
        yield requests
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _any_rank(flag: bool, dist_info: DistInfo, device: torch.device) -> bool:
    """Whether any process asks to stop: under torchrun all of them stop at the same step."""
    if not dist_info.enabled:
        return flag
    import torch.distributed as dist

    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


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


# SGD's momentum: 0.9, as in the segmentation recipes this code follows; no config asked for another.
SGD_MOMENTUM = 0.9
# RMSprop's smoothing of the squared gradients: Keras' rho (torch's default is 0.99), as the
# ADE20K Keras recipes the RMSprop runs compare against use it. RMSprop takes no momentum:
# torch's and Keras' default to 0, and SGD's 0.9 would silently change it.
RMSPROP_ALPHA = 0.9
# The poly schedule's exponent, (1 − t/T)^0.9: DeepLab's, which every poly config used.
POLY_POWER = 0.9


def build_optimizer(params: Iterable, name: str, lr: float, weight_decay: float = 0.0,
                    momentum: float = SGD_MOMENTUM):
    """`params`: parameters, or groups (dicts) whose optional `lr_mult` scales `lr` for that group.
    `momentum` is SGD's alone.

    Adam, AdamW and SGD run fused (one kernel over all parameters, on CPU and CUDA): on 2 CPU
    threads the per-parameter loop took 150 ms per Adam step for EncDecUnpool's 29 M parameters,
    13 % of its bf16 training step, the fused kernel 38 ms (SGD: 2.7× faster); same updates to
    float32 rounding. torch has no fused RMSprop."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**group, "lr": lr * group["lr_mult"]} if "lr_mult" in group else group for group in params]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=RMSPROP_ALPHA, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (adam, adamw, sgd, rmsprop)")


class PolyDecay:
    """The poly factor (1 − t/T)^p of step t. An object, not a lambda: LambdaLR saves its
    `total_iters` with the scheduler, and a time budget can shorten it (`_set_decay_lengths`)."""

    def __init__(self, total_iters: int, power: float):
        self.total_iters, self.power = int(total_iters), float(power)

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / max(1, self.total_iters)) ** self.power


def build_scheduler(optimizer, schedule: str, total_iters: int, poly_power: float = POLY_POWER):
    """A per-iteration LambdaLR: constant, or poly (1 − t/T)^p over `total_iters` steps."""
    if schedule == "constant":
        factor = lambda it: 1.0  # noqa: E731
    elif schedule == "poly":
        factor = PolyDecay(total_iters, poly_power)
    else:
        raise ValueError(f"unknown schedule {schedule!r} (constant, poly)")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
                           pixel_weights: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross entropy averaged over labelled pixels, each weighted by its class and its own weight.

    `pixel_weights` (N×H×W) lets pseudo-labelled pixels count less than real labels. The mean is
    normalised by the total weight, as `F.cross_entropy(weight=...)` does.
    """
    per_pixel = F.cross_entropy(logits.float(), target, reduction="none", ignore_index=ignore_index)
    valid = target != ignore_index
    weight = valid.float()
    if class_weights is not None:
        weight = weight * class_weights.to(logits.device)[target.clamp(max=len(class_weights) - 1)]
    if pixel_weights is not None:
        weight = weight * pixel_weights
    return (per_pixel * weight).sum() / weight.sum().clamp(min=1e-8)


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


def _rebase_schedule(scheduler, steps_done: int, log: Callable[[str], None]) -> None:
    """Move a per-step schedule to `steps_done`, where a resumed run stands in this run's steps.

    An epoch has another number of steps when a run resumes under another number of processes
    (torchrun: the epoch's crops are shared among them), so the saved step count would put the
    learning rate elsewhere in its schedule than the epochs done. build_scheduler's schedules
    are closed-form in the step, so setting the step sets the learning rate."""
    if scheduler.last_epoch == steps_done:
        return
    log(f"resumed with {steps_done} steps in the epochs done, where the checkpoint counted {scheduler.last_epoch} "
        f"(another number of processes): the learning-rate schedule continues from step {steps_done}")
    scheduler.last_epoch = steps_done - 1
    with warnings.catch_warnings():
        # "lr_scheduler.step() before optimizer.step()": true, and meant.
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()


def _poly_decays(scheduler) -> list[PolyDecay]:
    return [factor for factor in getattr(scheduler, "lr_lambdas", []) if isinstance(factor, PolyDecay)]


def _set_decay_lengths(scheduler, total_iters: int | list[int]) -> None:
    """End the poly decays of `scheduler` at step `total_iters` (one for all, or one each)."""
    decays = _poly_decays(scheduler)
    lengths = total_iters if isinstance(total_iters, list) else [total_iters] * len(decays)
    for decay, length in zip(decays, lengths):
        decay.total_iters = int(length)


def epochs_within_budget(budget_s: float, elapsed_s: float, epoch_s: float, epochs_done: int,
                         epochs_asked: int) -> int:
    """How many epochs in all a run that has spent `elapsed_s` of `budget_s` seconds on its first
    `epochs_done` epochs can train, at `epoch_s` seconds an epoch: never fewer than it has done
    (nor than one), never more than asked."""
    more = math.floor(max(0.0, budget_s - elapsed_s) / max(epoch_s, 1e-9))
    return int(min(epochs_asked, max(epochs_done + more, epochs_done, 1)))


def _max_over_ranks(value: float, dist_info: DistInfo, device: torch.device) -> float:
    """The largest `value` of all processes: under torchrun every rank plans on the slowest one,
    so that all of them train the same epochs."""
    if not dist_info.enabled:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


# Steps timed at the start of a stage for its duration estimate (the first ones include warm-up).
ESTIMATE_AFTER_STEPS = 5


def _minutes(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


# The wall clock of time budgets (monotonic: a clock set back cannot lengthen training); tests replace it.
_clock = time.monotonic


def fit(*, model: torch.nn.Module, loader, optimizer, scheduler, compute_loss: LossFn, epochs: int,
        run_dir: Path, device: torch.device, amp_dtype: torch.dtype | None = None,
        validate: Callable[[torch.nn.Module, int], dict] | None = None, select_key: str = "miou",
        config: dict | None = None, resume: bool = False, dist_info: DistInfo = DistInfo(), writer=None,
        desc: str = "train", log: Callable[[str], None] = print, show_progress: bool = True,
        checkpoint_extras: dict | None = None, on_nonfinite: str = "stop", validate_every: int = 1,
        time_budget_s: float | None = None, companions: dict[str, torch.nn.Module] | None = None) -> list[dict]:
    """Train for `epochs`, validating every `validate_every` epochs and after the last; returns
    the per-epoch history.

    `time_budget_s`: the first epoch this call trains is timed (and validated, so that the
    estimate includes validation) and training stops after as many epochs as fit in the budget
    from the start of the call; a poly schedule then decays to zero at that epoch instead. The
    plan is saved in the checkpoints (`time_budget`), and a resumed run with the same `epochs`
    keeps it. `checkpoint_extras` go into every checkpoint beside the config (the class names, say).
    `companions`: modules that train beside the model without the optimizer (a mean teacher), saved
    in every checkpoint and restored on resume.
    `on_nonfinite`: "stop" raises NonFiniteLoss at the first non-finite loss, "skip" skips the
    step (counted per epoch as `skipped_nonfinite_steps`); a `training_loader` lets the message
    name the batch's samples. Ctrl-C / SIGTERM saves the step
    reached to `last.pt` and raises TrainingInterrupted."""
    run_dir = Path(run_dir)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    start_epoch, best_score, history, global_step, partial = 0, -math.inf, [], 0, None
    if validate_every < 1:
        raise ValueError(f"validate_every must be at least 1, got {validate_every}")
    if time_budget_s is not None and time_budget_s <= 0:
        raise ValueError(f"time_budget_s must be positive, got {time_budget_s}")
    budget_started = _clock()
    epochs_planned, plan = epochs, None  # plan: {"epochs_asked", "epochs_planned"} once the budget is spent

    if last_path.exists():
        if not resume:
            raise CheckpointError(f"{last_path} exists: pass --resume to continue that run, or choose another --out")
        state = load_checkpoint(last_path, map_location=device)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for name, module in (companions or {}).items():
            if name not in state.get("companions", {}):
                raise CheckpointError(f"{last_path} has no state of the {name} this run trains beside the model")
            module.load_state_dict(state["companions"][name])
        # The decay lengths the caller built in this run's steps, not the saved ones, which count the
        # steps of the interrupted run's processes (another number of them under torchrun).
        decay_lengths = [decay.total_iters for decay in _poly_decays(scheduler)]
        scheduler.load_state_dict(state["lr_scheduler"])
        _set_decay_lengths(scheduler, decay_lengths)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"] + 1
        best_score = state["best_score"]
        history = list(state["history"])
        global_step = state["global_step"]
        set_rng_state(state["rng"])
        if state.get("partial_epoch"):
            partial = EpochProgress.from_dict(state["partial_epoch"])
            log(f"{desc}: resumed from {last_path} in epoch {start_epoch + 1}, after step {partial.steps_done}")
        else:
            log(f"{desc}: resumed from {last_path} after epoch {start_epoch}")
        saved_plan = state.get("time_budget")
        if time_budget_s is not None and saved_plan and saved_plan["epochs_asked"] == epochs:
            plan, epochs_planned = dict(saved_plan), int(saved_plan["epochs_planned"])
            _set_decay_lengths(scheduler, epochs_planned * len(loader))
            log(f"{desc}: keeps the plan of the interrupted run, {epochs_planned} of {epochs} epochs")
        _rebase_schedule(scheduler, start_epoch * len(loader) + (partial.steps_done if partial else 0), log)
    planning = time_budget_s is not None and plan is None

    def checkpoint(epoch_done: int, progress: EpochProgress | None = None) -> dict:
        return {
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "epoch": epoch_done, "best_score": best_score, "history": history, "global_step": global_step,
            "rng": rng_state(), "config": config or {}, **(checkpoint_extras or {}),
            "partial_epoch": progress.as_dict() if progress is not None else None,
            "epochs": epochs_planned, "time_budget": plan,
            **({"companions": {name: m.state_dict() for name, m in companions.items()}} if companions else {}),
        }

    def announce(steps: int, seconds: float) -> None:
        # Measured on the first steps of this call, before validation: a floor of the stage's
        # time, shown early so that a stage hours long is known to be so in its first minute.
        per_step = seconds / steps
        left = (epochs_planned - start_epoch) * len(loader) - (partial.steps_done if partial else 0)
        end = time.strftime("%H:%M", time.localtime(time.time() + per_step * (left - steps)))
        long = (" — more than an hour: fewer epochs or iters_per_epoch, or a time budget (max_minutes), "
                "shorten it" if per_step * left > 3600 else "")
        log(f"{desc}: {per_step:.2f} s a step here; {left} steps: about {_minutes(per_step * left)} of "
            f"training (ends about {end}, validation not included){long}")

    with stop_requests() as stop:
        epoch = start_epoch
        while epoch < epochs_planned:  # not a range: the time budget may shorten it after the first epoch
            set_loader_epoch(loader, epoch)
            started = time.perf_counter()
            steps_before = partial.steps_done if partial is not None else 0
            train_stats, global_step, progress, stopped_by = train_one_epoch(
                model, loader, optimizer, scheduler, compute_loss, epoch, device, amp_dtype, scaler, writer,
                global_step, desc, show_progress and dist_info.is_main, progress=partial, stop=stop,
                after_steps=(min(ESTIMATE_AFTER_STEPS, len(loader)), announce) if epoch == start_epoch else None,
                on_nonfinite=on_nonfinite, dist_info=dist_info, log=log)
            partial = None
            if stopped_by is not None:
                if dist_info.is_main:
                    save_checkpoint(last_path, checkpoint(epoch - 1, progress))
                raise TrainingInterrupted(stopped_by, last_path, epoch + 1, progress.steps_done, len(loader))
            train_s = time.perf_counter() - started
            validated = validate is not None and (planning or (epoch + 1) % validate_every == 0
                                                  or epoch + 1 == epochs_planned)
            val_stats = validate(model, epoch) if validated else {}
            if planning:
                planning = False
                steps = max(1, progress.steps_done - steps_before)
                epoch_s = train_s / steps * len(loader)
                epoch_s += (time.perf_counter() - started - train_s) / validate_every
                epoch_s = _max_over_ranks(epoch_s, dist_info, device)
                elapsed = _max_over_ranks(_clock() - budget_started, dist_info, device)
                epochs_planned = epochs_within_budget(time_budget_s, elapsed, epoch_s, epoch + 1, epochs)
                plan = {"epochs_asked": epochs, "epochs_planned": epochs_planned}
                _set_decay_lengths(scheduler, epochs_planned * len(loader))
                cut = (f"{epochs_planned} of {epochs} epochs fit" if epochs_planned < epochs
                       else f"all {epochs} epochs fit")
                log(f"{desc}: {cut} in the time budget of {time_budget_s / 60:.1f} min (an epoch takes "
                    f"{epoch_s:.0f} s here)")
            record = {"epoch": epoch + 1, "train_loss": train_stats.get("loss", math.nan),
                      "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started,
                      **{f"train_{k}": v for k, v in train_stats.items() if k != "loss"},
                      **{f"val_{k}": v for k, v in val_stats.items()}}
            if progress.skipped_nonfinite:
                record["skipped_nonfinite_steps"] = progress.skipped_nonfinite
            history.append(record)
            score = val_stats.get(select_key, -math.inf) if val_stats else -math.inf
            improved = validate is None or (score is not None and score > best_score)
            if improved and validate is not None:
                best_score = score
            if writer is not None:
                for key, value in val_stats.items():
                    writer.add_scalar(f"{desc}/val_{key}", value, epoch + 1)
            summary = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float) and k != "seconds")
            skipped = f", {progress.skipped_nonfinite} non-finite steps skipped" if progress.skipped_nonfinite else ""
            log(f"{desc} epoch {epoch + 1}/{epochs_planned}: {summary}{skipped} ({record['seconds']:.0f} s)")
            if dist_info.is_main:
                state = checkpoint(epoch)
                save_checkpoint(last_path, state)
                if improved:
                    save_checkpoint(best_path, state)
            epoch += 1
    return history
