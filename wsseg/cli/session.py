"""What every long command shares: where its log goes, and how Ctrl-C or SIGTERM end it.

A command that is stopped prints the command that continues it and exits with the signal's code
(128 + its number) instead of a traceback.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is when a line is logged, not to the stream it was when the
    handler was made: a caller that swaps stdout and closes its own (pytest's capture, a notebook)
    must not leave the log writing into a closed file."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _):
        pass


def _setup_logging(run_dir: Path | None = None, quiet: bool = False) -> None:
    """Log to stdout, and to `run_dir/log.txt` when given; `quiet`: warnings and errors only
    (the processes other than rank 0 under torchrun, which would repeat its every line)."""
    handlers: list[logging.Handler] = [_StdoutHandler()]
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "log.txt"))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", handlers=handlers, force=True)


def _until_interrupted(work, continue_command: str) -> int:
    """Run `work()`; Ctrl-C or SIGTERM end it with the command that continues it and the exit code
    of that signal (128 + its number) instead of a traceback."""
    from wsseg.core.interruptions import TrainingInterrupted

    previous_sigterm = _sigterm_as_interrupt()
    try:
        work()
    except TrainingInterrupted as stop:
        print(f"interrupted by {stop}. To continue where it stopped:\n  {continue_command}", file=sys.stderr)
        signum = getattr(signal.Signals, stop.signal_name, None) if stop.signal_name.startswith("SIG") else None
        return 128 + int(signum) if signum is not None else 1
    except KeyboardInterrupt as stop:
        # Outside the training steps (evaluation, pseudo masks): the stage in progress starts over.
        name = "SIGTERM" if isinstance(stop, _Terminated) else "Ctrl-C"
        print(f"interrupted by {name} between training steps; finished stages and the last checkpoint are kept. "
              f"To continue:\n  {continue_command}", file=sys.stderr)
        return 128 + int(signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT)
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


class _Terminated(KeyboardInterrupt):
    pass


def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's preemption) handled as Ctrl-C is, so that it ends with the resume
    command rather than silently; the training loop catches both at its step boundaries."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        raise _Terminated()

    return signal.signal(signal.SIGTERM, terminate)
