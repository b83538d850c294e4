"""Ctrl-C and SIGTERM during training: a request to stop at the next step boundary, and the
exception that says where training stopped.

Apart from the loop that polls them, because the command line catches `TrainingInterrupted`
to print the command that continues the run, without reaching into the loop itself.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from wsseg.core.distributed import DistInfo


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped training at a step boundary, after saving `checkpoint`."""

    def __init__(self, signal_name: str, checkpoint: Path, epoch: int, step: int, steps_per_epoch: int):
        self.signal_name, self.checkpoint = signal_name, checkpoint
        super().__init__(f"{signal_name}: stopped in epoch {epoch}, after step {step} of {steps_per_epoch}; "
                         f"saved {checkpoint}")


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
