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

The epoch itself is `core.epoch.train_one_epoch`; its loader `core.loaders.training_loader`, the
optimisers and schedules `core.optim`, the stop requests `core.interruptions`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch

from wsseg.core.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap
from wsseg.core.distributed import DistInfo
from wsseg.core.epoch import EpochProgress, LossFn, train_one_epoch
from wsseg.core.interruptions import TrainingInterrupted, stop_requests
from wsseg.core.loaders import set_loader_epoch
from wsseg.core.optim import _poly_decays, _rebase_schedule, _set_decay_lengths


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
