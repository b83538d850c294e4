"""Worker processes (DataLoader workers, the pseudo masks' CRF pool) leave Ctrl-C and SIGTERM to
the process that started them.

A scheduler's preemption (SLURM) or `kill -- -PGID` sends SIGTERM to every process of the group,
and Ctrl-C sends SIGINT to every process of the foreground group. A DataLoader worker dies of
SIGTERM (torch's worker handler), and the main process then ends with "DataLoader worker (pid …)
is killed by signal" instead of finishing its step, saving it and printing the resume command.
So workers ignore both, and the main process decides.

One SIGTERM still ends a worker: its parent's. The DataLoader terminates workers that do not
leave when told, and at interpreter exit multiprocessing terminates its daemonic children and
waits for them without a timeout; after an error whose traceback keeps a loader alive, a worker
that ignored every SIGTERM would hang that exit for ever. Python's handlers are not told who sent
a signal, so SIGTERM is blocked and a thread takes it with sigwaitinfo, which is.

This module imports nothing but the standard library, and that is deliberate: a spawned worker
imports it to unpickle its initializer, and the mask must be set before torch is imported there.
Importing torch starts OpenMP threads, which take the mask of the thread that starts them; a
thread started with SIGTERM unblocked would take a SIGTERM from another process and die of it
(the pool then waits for ever on the queue lock the dead worker held).
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def leave_stop_signals_to_parent(worker_id: int | None = None) -> None:
    """In a worker process: ignore SIGINT, and SIGTERM unless the parent sends it, which ends the
    worker with exit code 0 (as torch's own worker handler does, so that the parent's SIGCHLD
    check does not report it). `worker_id` lets it serve as a DataLoader `worker_init_fn`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no process groups to signal
        return
    # Held while the worker started (stop_signals_held): a pending SIGINT is dropped here.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if not hasattr(signal, "sigwaitinfo"):  # macOS: SIGTERM keeps its handler; ignored, it could hang the exit
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        return
    parent = os.getppid()
    # Blocked before the thread starts: the thread and every thread the worker starts later
    # inherit the mask, so the signal waits for sigwaitinfo instead of reaching a handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_sigterm_from, args=(parent,), name="sigterm-from-parent", daemon=True).start()


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back in this thread while it starts worker processes. A child
    starts with the signal mask of the thread that made it, so a signal to the group that comes
    before the child's worker_init_fn waits for it, instead of ending the child. This process
    loses nothing: another thread takes the signal meanwhile (and Python runs the handler in the
    main thread all the same), or it is delivered when the mask is restored."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
