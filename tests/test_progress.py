"""Progress bars are drawn on a terminal only: a log file or a pipe gets no carriage-return stream."""

import io

import pytest
import torch

from wsseg.core.progress import PROGRESS_ENV, progress_bar, progress_enabled
from wsseg.core.train import fit


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_follow_the_terminal_unless_the_variable_says_otherwise(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert progress_enabled(FakeTerminal()) is True
    assert progress_enabled(io.StringIO()) is False  # a file or a pipe
    monkeypatch.setenv(PROGRESS_ENV, "0")
    assert progress_enabled(FakeTerminal()) is False
    monkeypatch.setenv(PROGRESS_ENV, "1")
    assert progress_enabled(io.StringIO()) is True


def test_an_unknown_value_of_the_variable_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "maybe")
    with pytest.raises(ValueError, match=r"WSSEG_PROGRESS='maybe': expected 1 .* or 0"):
        progress_enabled()


def test_a_bar_not_drawn_takes_the_same_calls_and_writes_nothing(monkeypatch, capfd):
    monkeypatch.setenv(PROGRESS_ENV, "0")
    assert list(progress_bar(range(3), desc="work")) == [0, 1, 2]
    bar = progress_bar(total=3, desc="work")
    bar.update()
    bar.set_postfix(loss="0.1")
    bar.close()
    assert capfd.readouterr().err == ""


def tiny_fit(tmp_path):
    model = torch.nn.Conv2d(3, 2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    batches = [(torch.rand(2, 3, 8, 8), torch.randint(0, 2, (2, 8, 8))) for _ in range(4)]

    def loss(model, batch, epoch):
        images, labels = batch
        return torch.nn.functional.cross_entropy(model(images), labels), {}

    lines = []
    fit(model=model, loader=batches, optimizer=optimizer, scheduler=scheduler, compute_loss=loss, epochs=2,
        run_dir=tmp_path, device=torch.device("cpu"), log=lines.append)
    return lines


def test_training_into_a_pipe_writes_epoch_lines_and_no_redraws(tmp_path, monkeypatch, capfd):
    # Under capfd stderr is a file, as under `make demo > log.txt 2>&1`.
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    lines = tiny_fit(tmp_path / "piped")
    err = capfd.readouterr().err
    assert "\r" not in err, err[:200]
    # The duration estimate after the first steps, then one line an epoch.
    assert [line.split(":")[0] for line in lines] == ["train", "train epoch 1/2", "train epoch 2/2"]
    assert "s a step here" in lines[0]
    # The control: the same training with bars forced on does write redraws to the same capture.
    monkeypatch.setenv(PROGRESS_ENV, "1")
    tiny_fit(tmp_path / "forced")
    assert "\r" in capfd.readouterr().err
