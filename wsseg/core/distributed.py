"""Device choice and multi-process training under `torchrun` (one process per GPU or machine slot).

Without torchrun's environment variables everything runs in one process; nothing here needs a GPU.

Under torchrun every process runs the whole chain. The processes train one model together
(DistributedDataParallel), split the whole-tile evaluations among them (`core.evaluate`), and
leave every file to rank 0: the others wait at a collective wherever they need what it wrote
(`main_process_first`, `run_on_main`, `barrier`). Every helper here is a no-op in one process.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")

# How long a collective may wait for the slowest process. The pseudo masks are made by rank 0
# alone while the others wait at one (an hour or more on full-size imagery), so torch's own
# default (10 minutes for NCCL) would abort healthy runs. A crashed process does not make the
# others wait this long: torchrun ends every process of the job when one fails.
DEFAULT_TIMEOUT_MIN = 6 * 60
TIMEOUT_ENV = "WSSEG_DIST_TIMEOUT_MIN"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes: NCCL when `device` resolves to CUDA, else gloo.

    Collectives wait up to `$WSSEG_DIST_TIMEOUT_MIN` minutes (default 6 h) for the slowest process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if info.world_size > 1 and not dist.is_initialized():
        on_cuda = choose_device(device, info).type == "cuda"
        if on_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if on_cuda else "gloo", timeout=timedelta(minutes=_timeout_min()))
    return info


def _timeout_min() -> float:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_MIN))
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of minutes, got {value!r}")
    return minutes


def choose_device(requested: str = "auto", dist_info: DistInfo = DistInfo()) -> torch.device:
    """The device of this process: under torchrun, "auto" and "cuda" mean this process's own GPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info.local_rank)
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dist_info.local_rank)
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting; None means plain float32."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use bf16 on CPU")
        return torch.float16
    raise ValueError(f"unknown precision {precision!r}")


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _collective_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """`tensor` summed over the processes, in place (and returned), whatever device it is on."""
    if not info.enabled:
        return tensor
    moved = tensor.to(_collective_device())
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    if moved is not tensor:
        tensor.copy_(moved)
    return tensor


def sum_over_ranks(array: np.ndarray, info: DistInfo) -> np.ndarray:
    """An integer array (a confusion matrix) summed over the processes: exact, whatever their number."""
    if not info.enabled:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"sum_over_ranks sums integer counts exactly; got {array.dtype}")
    return all_reduce_sum(torch.from_numpy(np.array(array, dtype=np.int64)), info).numpy()  # a copy: `array` stays


def merge_over_ranks(part: dict, info: DistInfo) -> dict:
    """The union of every process's `part` (keys must not repeat across processes), on every process."""
    if not info.enabled:
        return part
    parts: list[dict | None] = [None] * info.world_size
    dist.all_gather_object(parts, part)
    merged: dict = {}
    for rank_part in parts:
        merged.update(rank_part)
    return merged


def run_on_main(make: Callable[[], T], info: DistInfo) -> T:
    """`make()` run by rank 0 alone; every process gets its result (it must pickle).

    The others wait meanwhile: for work that writes files (the pseudo masks) or that must be
    decided once."""
    if not info.enabled:
        return make()
    result = [make() if info.is_main else None]
    dist.broadcast_object_list(result, src=0)
    return result[0]


@contextmanager
def main_process_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the block first, the others after it: rank 0 creates what is missing (a
    generated dataset, the split, the crop tags) and the others find it.

    If rank 0 fails in the block the others still go in, and most likely fail the same way."""
    if not info.is_main:
        barrier(info)
    try:
        yield
    finally:
        if info.is_main:
            barrier(info)


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm running statistics) into every process's `module`.

    DistributedDataParallel keeps the parameters equal, but each process updates its running
    statistics with its own last batch: without this, the processes would evaluate slightly
    different models, none of them the one rank 0 saves."""
    if not info.enabled:
        return
    device = _collective_device()
    for buffer in module.buffers():
        moved = buffer.data.to(device)
        dist.broadcast(moved, src=0)
        buffer.data.copy_(moved)
