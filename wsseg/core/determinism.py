"""Bit-for-bit repeatable runs: torch's deterministic algorithms and cuDNN's deterministic kernels.

The seeds fix every random draw (`split.seed` the split; `train.seed` the initialisation, data
order, crops and augmentations), and on a CPU that alone makes two runs of one config equal. On a
GPU some kernels still differ from run to run: atomic adds in backward passes, and cuDNN's
autotuned convolution choice. `train.deterministic` makes torch pick deterministic kernels, at
some cost in speed.
"""

from __future__ import annotations

import os

import torch

# cuBLAS is deterministic only with a fixed workspace (CUDA >= 10.2); read when its first handle
# is made, so it is set before any model reaches the GPU.
CUBLAS_WORKSPACE = ":4096:8"


def use_deterministic_algorithms(enabled: bool) -> None:
    """Turn deterministic kernels on or off for the whole process (the flags are torch-global,
    so a run that does not ask for them must also switch off what an earlier run left on)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    # warn_only: an op without a deterministic kernel (a few CUDA backward passes) warns with its
    # name instead of stopping a run hours in; the warning says which result may still vary.
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        # Autotuning times candidate kernels and keeps the fastest: a choice that can change per run.
        torch.backends.cudnn.benchmark = False

