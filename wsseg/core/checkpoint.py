"""Checkpoints as plain dicts (as in torchvision's references), written atomically.

A checkpoint holds everything needed to continue exactly: model, optimizer, scheduler, grad
scaler, epoch, best score, history, RNG states and the merged config. Loading uses
`weights_only=True`, so a checkpoint file cannot execute code.
"""

from __future__ import annotations

import pickle
import random
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsseg.core.io import atomic_write


class CheckpointError(RuntimeError):
    pass


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store it as a tensor.
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    # Python's random state is a nested tuple; serialisation may turn tuples into lists.
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` through a temporary file: a full disk or a crash mid-write leaves
    the previous checkpoint as it was."""
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as err:
        # torch's zip writer reports a failed write (a full disk) as a RuntimeError.
        if isinstance(err, RuntimeError) and "write" not in str(err):
            raise
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip().splitlines()[0]
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise CheckpointError(f"cannot write the checkpoint {path}: {reason}; {kept}. Free space (or fix the "
                              f"folder's permissions) and continue the run with --resume") from err


def _check_member_checksums(path: Path) -> None:
    """torch.load does not check the CRC-32 that the zip format keeps of every member, so a byte
    changed inside a tensor would load as a silently different weight: check them here."""
    if not zipfile.is_zipfile(path):
        return  # truncated, legacy or foreign: torch.load says what it is
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as err:  # a broken member
        raise CheckpointError(f"cannot load checkpoint {path}: broken zip archive ({type(err).__name__}: {err})") from None
    if damaged is not None:
        raise CheckpointError(f"cannot load checkpoint {path}: its member {damaged} does not match the checksum "
                              f"written with it: the file was changed or damaged after it was saved")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _check_member_checksums(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message spans a page and suggests weights_only=False: say what was refused, in one line.
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" ({refused.group(1)})" if refused else ""
        raise CheckpointError(f"cannot load checkpoint {path}: it holds a Python object{what} besides tensors and "
                              f"plain data, which weights-only loading refuses, so that no file can run code; "
                              f"only a checkpoint saved by wsseg loads") from None
    except Exception as err:  # a truncated or foreign file: say which one
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first_line}") from None


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str,
                 keep: tuple[str, ...] = ()) -> torch.nn.Module:
    """Load `weights` into `model`, every key and shape exactly, except keys starting with a
    prefix in `keep`, which keep the model's own values (a classifier to learn afresh).

    Never a silent partial load: a missing or unexpected key or a shape that differs is a
    CheckpointError naming `source` and the first keys of each kind.
    """
    own = model.state_dict()
    wanted = {k: v for k, v in own.items() if not k.startswith(keep)} if keep else own
    given = {k: v for k, v in weights.items() if not k.startswith(keep)} if keep else dict(weights)
    problems = []
    for what, keys in (("missing", [k for k in wanted if k not in given]),
                       ("unexpected", [k for k in given if k not in wanted]),
                       ("shape differs", [f"{k} {tuple(given[k].shape)} vs the model's {tuple(wanted[k].shape)}"
                                          for k in wanted if k in given and given[k].shape != wanted[k].shape])):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            problems.append(f"{what}: {', '.join(keys[:5])}{more}")
    if problems:
        raise CheckpointError(f"the weights of {source} do not fit the model ({'; '.join(problems)})")
    model.load_state_dict({**own, **given}, strict=True)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DistributedDataParallel (state dict keys without `module.`)."""
    return model.module if hasattr(model, "module") else model
