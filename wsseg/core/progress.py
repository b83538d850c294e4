"""Progress bars on a terminal only: the one place that decides whether wsseg draws them.

A bar redraws itself with carriage returns many times a second. On a terminal that is one line
that moves; in a file or a pipe (`make demo > log.txt 2>&1`, a CI log) every redraw stays, and a
6 KB log becomes 300 KB of them. So bars are drawn only when stderr, where tqdm writes, is a
terminal; a log then holds the one-line summaries (one per epoch, one per stage) and nothing else.
`WSSEG_PROGRESS=1` forces bars on (a notebook, whose stderr is no terminal), `WSSEG_PROGRESS=0`
forces them off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TextIO

from tqdm.auto import tqdm

PROGRESS_ENV = "WSSEG_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def progress_enabled(stream: TextIO | None = None) -> bool:
    """Whether to draw progress bars: `$WSSEG_PROGRESS` if set, else whether `stream`
    (default: stderr) is a terminal. An unknown value of the variable is a ValueError."""
    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    if value:
        raise ValueError(f"{PROGRESS_ENV}={os.environ[PROGRESS_ENV]!r}: expected 1 (bars on) or 0 (bars off); "
                         "unset, bars are drawn only when stderr is a terminal")
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **tqdm_kwargs) -> tqdm:
    """A tqdm bar, drawn only if `enabled` (the caller's own switch) and `progress_enabled()`.

    A bar that is not drawn takes `update`, `set_postfix` and `close` as no-ops and iterates as
    its iterable does, so callers need no second code path."""
    return tqdm(iterable, disable=not (enabled and progress_enabled()), dynamic_ncols=True, **tqdm_kwargs)
