"""Atomic file writes: a crash mid-write leaves the previous file intact, never half a file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def new_file_mode(directory: bool = False) -> int:
    """The mode `open()` (or `mkdir`, with `directory`) gives what it creates: 0o666 (0o777) less
    the process umask. `tempfile` creates 0o600 (0o700) whatever the umask; renamed into place
    as it is, a run's masks, checkpoints and JSON files could not be read by a colleague on a
    shared cluster, while the figures beside them could."""
    # The umask can only be read by setting it; wsseg writes files from its main thread, so no
    # other thread creates a file in the instant it is 0.
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it over `path`,
    which gets the mode a plain `open()` would have given it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        # After `write`: a writer that replaces the file rather than writing into it leaves its own mode.
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> Path:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return Path(path)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: NaN/inf → None, numpy/torch scalars and arrays → Python, tuples → lists.

    NaN is not JSON: an undefined score (a class absent from ground truth and prediction) is null.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return to_jsonable(obj.tolist())
    return obj


def score_or_nan(value) -> float:
    """A score as float, with None (how `to_jsonable` writes NaN) read back as NaN."""
    return float("nan") if value is None else float(value)


def atomic_write_json(path: Path, data: Any) -> Path:
    # allow_nan=False: anything non-finite that escaped to_jsonable is a bug, not "NaN" in a file.
    return atomic_write_text(path, json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")
