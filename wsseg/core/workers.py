"""DataLoader workers that leave Ctrl-C and SIGTERM to the process that iterates them.

A scheduler's preemption (SLURM) or `kill -- -PGID` sends SIGTERM to every process of the group,
and Ctrl-C sends SIGINT to every process of the foreground group. A DataLoader worker dies of
SIGTERM (torch's worker handler), and the main process then ends with "DataLoader worker (pid …)
is killed by signal" instead of finishing its step, saving it and printing the resume command.
So workers ignore both, and the main process decides.

How a worker tells its parent's SIGTERM from the others': `core.signals`.
"""

from __future__ import annotations

import functools
from typing import Callable

from torch.utils.data import DataLoader

from wsseg.core.signals import leave_stop_signals_to_parent, stop_signals_held


def worker_init(then: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """A DataLoader `worker_init_fn` that leaves the stop signals to the parent, then calls
    `then(worker_id)` (a loader's own worker_init_fn). A partial of module functions, so that it
    pickles for loaders whose workers are spawned."""
    return functools.partial(_init_worker, then)


def _init_worker(then: Callable[[int], None] | None, worker_id: int) -> None:
    leave_stop_signals_to_parent()
    if then is not None:
        then(worker_id)


class SignalSafeDataLoader(DataLoader):
    """A DataLoader whose workers leave Ctrl-C and SIGTERM to the process that iterates it, from
    the moment they start; its own `worker_init_fn`, if any, runs after that."""

    def __init__(self, dataset, *, worker_init_fn: Callable[[int], None] | None = None, **options):
        super().__init__(dataset, worker_init_fn=worker_init(worker_init_fn), **options)

    def __iter__(self):
        # The workers start here (the first time only, when they persist).
        with stop_signals_held():
            return super().__iter__()
