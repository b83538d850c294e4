"""One run per folder: a lock file that names the process holding the folder.

Two processes training into one folder would overwrite each other's checkpoints. The lock is
`RUN/.lock` (JSON: pid, host, start time, command), created with O_EXCL so that exactly one
process wins. A lock whose process is gone (a killed run) is taken over with a warning; one held
by a live process, here or on another host, refuses the second run and names the first.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunFolderInUse(RuntimeError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _holder(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # half-written by a process killed while creating it: nobody holds it
        return None


class RunLock:
    """The lock on `run_dir`, held by this process until `release()` or its exit."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)}
        for _ in range(3):  # a stale lock is removed, then the creation raced for again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _holder(self.path)
                if holder is not None and holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    break  # this process already holds it (a second stage of the same run)
                if holder is not None and holder.get("host") != me["host"]:
                    raise RunFolderInUse(
                        f"{self.path.parent} is in use by process {holder.get('pid')} on host {holder.get('host')} "
                        f"(started {holder.get('started')}); if that run is dead, delete {self.path}") from None
                if holder is not None and _alive(int(holder.get("pid", -1))):
                    raise RunFolderInUse(
                        f"{self.path.parent} is in use by process {holder['pid']} (started {holder.get('started')}: "
                        f"{holder.get('command')}); wait for it, stop it, or choose another --out") from None
                log.warning(f"{self.path}: taking over the lock of process "
                            f"{holder.get('pid') if holder else '(unknown)'}, which is no longer running")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(me, file)
            break
        else:
            raise RunFolderInUse(f"{self.path}: could not take the lock (another process keeps taking it)")
        self.held = True
        atexit.register(self.release)
        return self

    def release(self) -> None:
        if not self.held:
            return
        holder = _holder(self.path)
        if holder is not None and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


@contextmanager
def run_folder_held(run_dir: Path, is_main: bool = True) -> Iterator[None]:
    """The block runs with `run_dir` locked by the main process (under torchrun the other
    processes share its run and take no lock)."""
    lock = RunLock(run_dir).acquire() if is_main else None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
