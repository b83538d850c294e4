import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from wsseg.core import train as train_module
from wsseg.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wsseg.core.epoch import train_one_epoch
from wsseg.core.loaders import set_loader_epoch, training_loader
from wsseg.core.losses import weighted_cross_entropy
from wsseg.core.optim import build_optimizer, build_scheduler
from wsseg.core.train import epochs_within_budget, fit


class NoisyCrops(Dataset):
    """Random images whose label is the brightest channel; randomness drawn from the global RNG
    (as augmentations are), so resuming must restore RNG states to reproduce a run."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        image = torch.rand(3, 8, 8)
        return image, image.argmax(0)


def tiny_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.3), nn.Conv2d(8, 3, 1))


def run(tmp_path, epochs, resume=False, model=None):
    torch.manual_seed(0)
    model = model or tiny_model()
    optimizer = build_optimizer(model.parameters(), "adam", 1e-2)
    loader = DataLoader(NoisyCrops(), batch_size=4, shuffle=True)
    scheduler = build_scheduler(optimizer, "poly", 4 * len(loader))

    def compute_loss(model, batch, epoch):
        images, masks = batch
        return weighted_cross_entropy(model(images), masks), {}

    def validate(model, epoch):
        return {"miou": [0.5, 0.7, 0.6, 0.8][epoch]}

    history = fit(model=model, loader=loader, optimizer=optimizer, scheduler=scheduler, compute_loss=compute_loss,
                  epochs=epochs, run_dir=tmp_path, device=torch.device("cpu"), validate=validate, resume=resume,
                  log=lambda msg: None, show_progress=False)
    return model, history


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    straight, history = run(tmp_path / "straight", epochs=4)
    # An "interrupted" run: 2 epochs, then a new process (fresh model, reseeded) resumes to 4.
    run(tmp_path / "split", epochs=2)
    torch.manual_seed(123)
    resumed, resumed_history = run(tmp_path / "split", epochs=4, resume=True, model=tiny_model())
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in resumed_history]


@pytest.mark.parametrize("batch_size, resumed_batch_size", [(4, 2), (2, 4)])
def test_a_resume_with_other_steps_per_epoch_continues_the_schedule_by_epoch(tmp_path, batch_size,
                                                                            resumed_batch_size):
    # Under torchrun the processes share an epoch's crops: resumed under another number of them,
    # an epoch has another number of steps, as here with another batch size.
    messages = []

    def fit_poly(epochs, batch_size, resume=False):
        torch.manual_seed(0)
        model = tiny_model()
        optimizer = build_optimizer(model.parameters(), "adam", 1e-2)
        loader = DataLoader(NoisyCrops(), batch_size=batch_size)
        scheduler = build_scheduler(optimizer, "poly", 4 * len(loader))
        fit(model=model, loader=loader, optimizer=optimizer, scheduler=scheduler, epochs=epochs, run_dir=tmp_path,
            compute_loss=lambda model, batch, epoch: (weighted_cross_entropy(model(batch[0]), batch[1]), {}),
            device=torch.device("cpu"), resume=resume, log=messages.append, show_progress=False)
        return scheduler, len(loader)

    fit_poly(2, batch_size)
    scheduler, steps_per_epoch = fit_poly(3, resumed_batch_size, resume=True)
    # Three of four epochs done in the resumed run's steps: poly (1 - 3/4)^0.9.
    assert scheduler.last_epoch == 3 * steps_per_epoch
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-2 * 0.25 ** 0.9)
    assert any("another number of processes" in message for message in messages)


def test_checkpoints_hold_the_full_state_and_best_follows_validation(tmp_path):
    run(tmp_path, epochs=4)
    last, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "best.pt")
    assert last["epoch"] == 3 and best["epoch"] == 3
    assert best["best_score"] == pytest.approx(0.8)
    assert set(last) >= {"model", "optimizer", "lr_scheduler", "epoch", "rng", "history", "config"}
    run(tmp_path / "three", epochs=3)
    assert load_checkpoint(tmp_path / "three" / "best.pt")["epoch"] == 1  # 0.7 beat the later 0.6


def test_checkpoint_extras_are_saved_beside_the_config(tmp_path):
    model = tiny_model()
    optimizer = build_optimizer(model.parameters(), "adam", 1e-2)
    loader = DataLoader(NoisyCrops(), batch_size=4)
    fit(model=model, loader=loader, optimizer=optimizer, scheduler=build_scheduler(optimizer, "constant", 2),
        compute_loss=lambda m, b, e: (weighted_cross_entropy(m(b[0]), b[1]), {}), epochs=1, run_dir=tmp_path,
        device=torch.device("cpu"), log=lambda msg: None, show_progress=False,
        checkpoint_extras={"classes": {"names": ["a", "b", "c"]}})
    assert load_checkpoint(tmp_path / "best.pt")["classes"] == {"names": ["a", "b", "c"]}


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    run(tmp_path, epochs=1)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match="pass --resume"):
        run(tmp_path, epochs=2)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(3)}})
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="c.pt"):
        load_checkpoint(tmp_path / "c.pt")


def test_weighted_cross_entropy_weights_classes_pixels_and_ignores():
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 0, 0, 0] = 2.0  # pixel 0 predicts class 0
    target = torch.tensor([[[0, 1, 255]]])
    per_pixel = torch.nn.functional.cross_entropy(logits, target, reduction="none", ignore_index=255)[0, 0]
    class_w = torch.tensor([1.0, 3.0])
    pixel_w = torch.tensor([[[0.5, 1.0, 1.0]]])
    expected = (0.5 * per_pixel[0] + 3.0 * per_pixel[1]) / (0.5 + 3.0)
    got = weighted_cross_entropy(logits, target, class_w, pixel_w)
    assert got.item() == pytest.approx(expected.item())
    # Same as torch's own class weighting when no pixel weights are given.
    ref = torch.nn.functional.cross_entropy(logits, target, weight=class_w, ignore_index=255)
    assert weighted_cross_entropy(logits, target, class_w).item() == pytest.approx(ref.item())


@pytest.mark.parametrize("schedule,expected", [("constant", [1, 1, 1, 1]), ("poly", [1, 0.75, 0.5, 0.25])])
def test_schedules(schedule, expected):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, schedule, total_iters=4, poly_power=1.0)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx(expected)


def test_encoder_learning_rate_multiplier_scales_the_encoder_group():
    from wsseg.models import build_segmenter, parameter_groups

    model = build_segmenter("unet", 3, base_channels=4, depth=2)
    assert len(parameter_groups("unet", model)) == 1
    groups = parameter_groups("unet", model, encoder_lr_mult=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith(("stem.", "down.")) for p in groups[0]["params"])
    assert not any(names[id(p)].startswith(("stem.", "down.")) for p in groups[1]["params"])
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    optimizer = build_optimizer(groups, "adamw", 1e-3)
    scheduler = build_scheduler(optimizer, "poly", 10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-3])
    optimizer.step(), scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * optimizer.param_groups[1]["lr"])


def test_a_scalar_is_averaged_over_the_steps_that_reported_it():
    model = tiny_model()
    optimizer = build_optimizer(model.parameters(), "adam", 1e-2)
    loader = DataLoader(NoisyCrops(), batch_size=2)
    scheduler = build_scheduler(optimizer, "constant", len(loader))
    steps = iter(range(len(loader)))

    def compute_loss(model, batch, epoch):
        # A loss term of some batches only, as task ii's online terms in a batch without N2 crops.
        step = next(steps)
        return weighted_cross_entropy(model(batch[0]), batch[1]), {"every": 1.0, **({"odd": step} if step % 2 else {})}

    stats, *_ = train_one_epoch(model, loader, optimizer, scheduler, compute_loss, 0, torch.device("cpu"), None, None,
                                show_progress=False)
    assert stats["every"] == 1.0 and stats["odd"] == (1 + 3) / 2


def test_rmsprop_takes_its_alpha_and_decay_but_not_sgds_momentum():
    model = tiny_model()
    optimizer = build_optimizer(model.parameters(), "rmsprop", 1e-3, weight_decay=0.01, momentum=0.9)
    assert isinstance(optimizer, torch.optim.RMSprop)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["alpha"], group["weight_decay"], group["momentum"]) == (1e-3, 0.9, 0.01, 0)
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'"):
        build_optimizer(model.parameters(), "adagrad", 1e-3)


class EpochStamped(Dataset):
    """Each sample: the epoch its copy of the dataset was set to, its index, the process that
    made it, and a draw from that process's global torch stream (as an augmentation might)."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.tensor([self.epoch, index, os.getpid(), torch.rand(()).item()], dtype=torch.float64)


def epochs_of(loader, epochs):
    samples = {}
    for epoch in epochs:
        set_loader_epoch(loader, epoch)  # what fit does before each epoch
        torch.manual_seed(100 + epoch)  # fit's saved stream at the epoch's start: the same data order
        samples[epoch] = torch.cat(list(loader))
    return samples


@pytest.mark.parametrize("workers", [0, 1])
def test_training_loader_workers_persist_and_make_each_epochs_samples(workers):
    torch.manual_seed(0)
    loader = training_loader(EpochStamped(), 2, num_workers=workers)
    assert loader.persistent_workers == (workers > 0)
    seen = epochs_of(loader, [0, 1, 2])
    for epoch, samples in seen.items():
        assert samples[:, 0].eq(epoch).all(), f"epoch {epoch}: samples made for epochs {samples[:, 0].tolist()}"
        assert sorted(samples[:, 1].tolist()) == [0, 1, 2, 3]
    if workers:
        assert len({samples[0, 2].item() for samples in seen.values()}) == 1  # one worker process throughout
        # A run resumed at epoch 2 starts a new worker there: it draws what the persistent one drew.
        torch.manual_seed(0)
        resumed = epochs_of(training_loader(EpochStamped(), 2, num_workers=workers), [2])[2]
        assert resumed[0, 2] != seen[2][0, 2]
        torch.testing.assert_close(resumed[:, [0, 1, 3]], seen[2][:, [0, 1, 3]])


# ------------------------------------------------------------------------------ time budgets
@pytest.mark.parametrize("budget, elapsed, epoch_s, done, asked, expected", [
    (100, 10, 10, 1, 16, 10),   # 90 s left: 9 more epochs of 10 s
    (100, 10, 10, 1, 5, 5),     # never more than asked
    (10, 30, 10, 1, 16, 1),     # over budget after the first epoch: that one stands
    (100, 95, 10, 3, 16, 3),    # never fewer than done
])
def test_epochs_within_budget(budget, elapsed, epoch_s, done, asked, expected):
    assert epochs_within_budget(budget, elapsed, epoch_s, done, asked) == expected


class FakeClock:
    """Time that passes only when the training says so: one second a step, one a validation."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def budgeted_run(run_dir, clock, budget_s, epochs=4, resume=False, validate_every=1, fail_in_epoch=None,
                 messages=None):
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = build_optimizer(model.parameters(), "adam", 1e-2)
    loader = DataLoader(NoisyCrops(), batch_size=4, shuffle=True)  # 2 steps an epoch
    scheduler = build_scheduler(optimizer, "poly", epochs * len(loader))
    validated = []

    def compute_loss(model, batch, epoch):
        if epoch == fail_in_epoch:
            raise RuntimeError("the machine went down")
        clock.now += 1.0
        images, masks = batch
        return weighted_cross_entropy(model(images), masks), {}

    def validate(model, epoch):
        clock.now += 1.0
        validated.append(epoch + 1)
        return {"miou": 0.1 * epoch}

    history = fit(model=model, loader=loader, optimizer=optimizer, scheduler=scheduler, compute_loss=compute_loss,
                  epochs=epochs, run_dir=run_dir, device=torch.device("cpu"), validate=validate, resume=resume,
                  log=(messages if messages is not None else []).append, show_progress=False,
                  validate_every=validate_every, time_budget_s=budget_s)
    return history, validated, scheduler


def test_a_time_budget_cuts_the_epochs_and_ends_the_decay_there(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(train_module, "_clock", clock)
    monkeypatch.setattr(train_module.time, "perf_counter", clock)
    messages = []
    # Epoch 1: 2 steps + its validation = 3 s of the 7: one more epoch of 2 + 1/3 s fits, not two.
    history, validated, scheduler = budgeted_run(tmp_path, clock, 7.0, epochs=6, validate_every=3,
                                                 messages=messages)
    assert [row["epoch"] for row in history] == [1, 2]
    # The first epoch is validated to time it, the last because it is the last.
    assert validated == [1, 2]
    assert history[-1]["lr"] == pytest.approx(0.0)  # the poly decay reached zero at the planned end
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["time_budget"] == {"epochs_asked": 6, "epochs_planned": 2} and last["epochs"] == 2
    assert any("2 of 6 epochs fit in the time budget" in m for m in messages)


def test_a_budget_that_holds_every_epoch_changes_nothing(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(train_module, "_clock", clock)
    monkeypatch.setattr(train_module.time, "perf_counter", clock)
    messages = []
    budgeted, _, _ = budgeted_run(tmp_path / "budget", clock, 1000.0, messages=messages)
    plain, _, _ = budgeted_run(tmp_path / "plain", clock, None)
    assert [row["train_loss"] for row in budgeted] == [row["train_loss"] for row in plain]
    assert any("all 4 epochs fit in the time budget" in m for m in messages)
    assert load_checkpoint(tmp_path / "plain" / "last.pt")["time_budget"] is None


def test_a_resumed_run_keeps_its_plan(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(train_module, "_clock", clock)
    monkeypatch.setattr(train_module.time, "perf_counter", clock)
    # Planned 3 of 8 epochs (3 s for epoch 1, then 3 s an epoch, budget 9 s), then lost in epoch 3.
    with pytest.raises(RuntimeError, match="went down"):
        budgeted_run(tmp_path, clock, 9.0, epochs=8, fail_in_epoch=2)
    assert load_checkpoint(tmp_path / "last.pt")["time_budget"] == {"epochs_asked": 8, "epochs_planned": 3}
    messages = []
    # A new process with a budget that would now allow more: it finishes the plan it had.
    history, validated, scheduler = budgeted_run(tmp_path, clock, 1000.0, epochs=8, resume=True, messages=messages)
    assert [row["epoch"] for row in history] == [1, 2, 3] and validated == [3]
    assert history[-1]["lr"] == pytest.approx(0.0)
    assert any("keeps the plan of the interrupted run, 3 of 8 epochs" in m for m in messages)


def test_validation_every_k_epochs_and_after_the_last(tmp_path):
    history, validated, _ = budgeted_run(tmp_path, FakeClock(), None, epochs=5, validate_every=2)
    assert validated == [2, 4, 5]
    assert [("val_miou" in row) for row in history] == [False, True, False, True, True]


def test_a_stage_announces_its_expected_duration_after_its_first_steps(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(train_module, "_clock", clock)
    monkeypatch.setattr(train_module.time, "perf_counter", clock)
    messages = []
    budgeted_run(tmp_path, clock, None, epochs=4, messages=messages)
    # One second a step (FakeClock), timed over the first 2 steps (an epoch has 2): 8 steps in all.
    (line,) = [m for m in messages if "s a step here" in m]
    assert line.startswith("train: 1.00 s a step here; 8 steps: about 0.1 min of training (ends about ")
