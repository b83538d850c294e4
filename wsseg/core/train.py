"""The training loop shared by every stage: optimiser, schedule, AMP, checkpoints, resume, logging.

A stage supplies `compute_loss(model, batch, epoch) -> (loss, scalars)` and optionally
`validate(model, epoch) -> scalars`; `fit` does the rest. Checkpoints are written after every
epoch (`last.pt`) and whenever the validation score improves (`best.pt`), so an interrupted
run continues from its last epoch with `resume=True` and ends with the same weights.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsseg.core.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap
from wsseg.core.distributed import DistInfo
from wsseg.datasets.base import IGNORE_INDEX

LossFn = Callable[[torch.nn.Module, object, int], "tuple[torch.Tensor, dict[str, float]]"]


def build_optimizer(params: Iterable, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    """`params`: parameters, or groups (dicts) whose optional `lr_mult` scales `lr` for that group."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**group, "lr": lr * group["lr_mult"]} if "lr_mult" in group else group for group in params]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (adam, adamw, sgd)")


def build_scheduler(optimizer, schedule: str, total_iters: int, iters_per_epoch: int,
                    poly_power: float = 0.9, step_epochs: int = 10, step_gamma: float = 0.1):
    """A per-iteration LambdaLR: constant, poly (1 − t/T)^p, or step decay every `step_epochs`."""
    if schedule == "constant":
        factor = lambda it: 1.0  # noqa: E731
    elif schedule == "poly":
        factor = lambda it: max(0.0, 1.0 - it / max(1, total_iters)) ** poly_power  # noqa: E731
    elif schedule == "step":
        factor = lambda it: step_gamma ** (it // (step_epochs * iters_per_epoch))  # noqa: E731
    else:
        raise ValueError(f"unknown schedule {schedule!r} (constant, poly, step)")
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
                    global_step: int = 0, desc: str = "train", show_progress: bool = True) -> tuple[dict, int]:
    """One pass over `loader`; each scalar is averaged over the steps that reported it (a loss
    term of the N2 crops, say, is absent from a batch that drew none)."""
    model.train()
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    bar = tqdm(loader, desc=f"{desc} epoch {epoch + 1}", leave=False, disable=not show_progress, dynamic_ncols=True)
    for batch in bar:
        with autocast:
            loss, scalars = compute_loss(model, batch, epoch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, step {global_step}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        scalars = {"loss": loss.item(), **scalars}
        for key, value in scalars.items():
            totals[key] = totals.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
        global_step += 1
        bar.set_postfix(loss=f"{scalars['loss']:.4f}")
        if writer is not None and global_step % 10 == 0:
            for key, value in scalars.items():
                writer.add_scalar(f"{desc}/{key}", value, global_step)
            writer.add_scalar(f"{desc}/lr", optimizer.param_groups[0]["lr"], global_step)
    return {key: value / counts[key] for key, value in totals.items()}, global_step


def _set_epoch(loader, epoch: int) -> None:
    # Crops and augmentations are a function of (seed, epoch, index): resumed runs see the same data.
    for obj in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
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


def fit(*, model: torch.nn.Module, loader, optimizer, scheduler, compute_loss: LossFn, epochs: int,
        run_dir: Path, device: torch.device, amp_dtype: torch.dtype | None = None,
        validate: Callable[[torch.nn.Module, int], dict] | None = None, select_key: str = "miou",
        config: dict | None = None, resume: bool = False, dist_info: DistInfo = DistInfo(), writer=None,
        desc: str = "train", log: Callable[[str], None] = print, show_progress: bool = True,
        checkpoint_extras: dict | None = None) -> list[dict]:
    """Train for `epochs`, validating after each epoch; returns the per-epoch history.

    `checkpoint_extras` go into every checkpoint beside the config (the class names, say)."""
    run_dir = Path(run_dir)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    start_epoch, best_score, history, global_step = 0, -math.inf, [], 0

    if last_path.exists():
        if not resume:
            raise CheckpointError(f"{last_path} exists: pass --resume to continue that run, or choose another --out")
        state = load_checkpoint(last_path, map_location=device)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"] + 1
        best_score = state["best_score"]
        history = list(state["history"])
        global_step = state["global_step"]
        set_rng_state(state["rng"])
        log(f"{desc}: resumed from {last_path} after epoch {start_epoch}")
        _rebase_schedule(scheduler, start_epoch * len(loader), log)

    for epoch in range(start_epoch, epochs):
        _set_epoch(loader, epoch)
        started = time.perf_counter()
        train_stats, global_step = train_one_epoch(
            model, loader, optimizer, scheduler, compute_loss, epoch, device, amp_dtype, scaler, writer,
            global_step, desc, show_progress and dist_info.is_main)
        val_stats = validate(model, epoch) if validate is not None else {}
        record = {"epoch": epoch + 1, "train_loss": train_stats["loss"], "lr": optimizer.param_groups[0]["lr"],
                  "seconds": time.perf_counter() - started,
                  **{f"train_{k}": v for k, v in train_stats.items() if k != "loss"},
                  **{f"val_{k}": v for k, v in val_stats.items()}}
        history.append(record)
        score = val_stats.get(select_key, -math.inf) if val_stats else -math.inf
        improved = validate is None or (score is not None and score > best_score)
        if improved and validate is not None:
            best_score = score
        if writer is not None:
            for key, value in val_stats.items():
                writer.add_scalar(f"{desc}/val_{key}", value, epoch + 1)
        summary = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float) and k != "seconds")
        log(f"{desc} epoch {epoch + 1}/{epochs}: {summary} ({record['seconds']:.0f} s)")
        if dist_info.is_main:
            state = {
                "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "epoch": epoch, "best_score": best_score, "history": history, "global_step": global_step,
                "rng": rng_state(), "config": config or {}, **(checkpoint_extras or {}),
            }
            save_checkpoint(last_path, state)
            if improved:
                save_checkpoint(best_path, state)
    return history
