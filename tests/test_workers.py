"""Worker processes leave Ctrl-C and SIGTERM to their parent, and still end when the parent ends them."""

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from wsseg.core.loaders import training_loader
from wsseg.core.signals import leave_stop_signals_to_parent, stop_signals_held

REPO = Path(__file__).resolve().parents[1]

_initialised = []


class WorkerPids(Dataset):
    """Each sample: the pid of the process that made it, and whether the loader's own
    worker_init_fn ran there."""

    def __len__(self):
        return 64

    def __getitem__(self, index):
        return torch.tensor([os.getpid(), len(_initialised)])


def remember_init(worker_id):
    _initialised.append(worker_id)


def wait_until_dead(process, timeout=10.0):
    deadline = time.monotonic() + timeout
    while process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not process.is_alive()


def test_workers_outlive_signals_from_others_and_end_on_their_parents():
    loader = training_loader(WorkerPids(), 2, num_workers=2, worker_init_fn=remember_init)
    batches = iter(loader)
    first = next(batches)
    assert first[:, 1].tolist() == [1, 1]  # the loader's own worker_init_fn ran in the worker
    workers = batches._workers
    # Right after the first batch, the second worker may still be starting: a signal then waits
    # for its worker_init_fn.
    for sig in ("TERM", "INT"):
        # From another process, as a signal to the process group comes: not the parent's.
        subprocess.run(["kill", f"-{sig}", *(str(w.pid) for w in workers)], check=True)
    time.sleep(0.5)
    assert all(w.is_alive() for w in workers)
    pids = {int(pid) for batch in (next(batches) for _ in range(8)) for pid in batch[:, 0]}
    assert pids == {w.pid for w in workers}

    # The parent's SIGTERM (what the DataLoader and multiprocessing send to end workers) ends them.
    workers[0].terminate()
    assert wait_until_dead(workers[0]) and workers[0].exitcode == 0
    batches._shutdown_workers()
    assert all(wait_until_dead(w) for w in workers)


def test_a_pool_outlives_signals_from_others_and_terminate_still_ends_it():
    with stop_signals_held():
        pool = multiprocessing.get_context("spawn").Pool(1, initializer=leave_stop_signals_to_parent)
    try:
        pid = pool.apply(os.getpid)
        for sig in ("TERM", "INT"):
            subprocess.run(["kill", f"-{sig}", str(pid)], check=True)
        time.sleep(0.5)
        assert pool.apply(os.getpid) == pid  # the same worker: a dead one would have been replaced
    finally:
        # pool.terminate() sends SIGTERM and waits without a timeout for the workers to end.
        stopper = threading.Thread(target=lambda: (pool.terminate(), pool.join()), daemon=True)
        stopper.start()
        stopper.join(timeout=60)
    assert not stopper.is_alive(), "pool.terminate() hangs: its workers ignore their parent's SIGTERM"


def test_an_error_that_keeps_a_loader_alive_still_exits():
    # Its traceback keeps the loader's workers alive until multiprocessing, at interpreter exit,
    # terminates them and waits: workers that ignored their parent's SIGTERM would hang there.
    script = ("from wsseg.core.loaders import training_loader\n"
              "batches = iter(training_loader(list(range(64)), 2, num_workers=2))\n"
              "next(batches)\n"
              "raise RuntimeError('an error while the loader is alive')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "an error while the loader is alive" in done.stderr, done.stderr
    assert "killed by signal" not in done.stderr, done.stderr


def test_a_spawned_worker_sets_its_mask_before_torch_starts_threads():
    """The initializer's module must not import torch: a spawned worker imports it to unpickle the
    initializer, and OpenMP threads torch starts before the mask is set would take SIGTERMs."""
    script = "import sys, wsseg.core.signals; sys.exit('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
