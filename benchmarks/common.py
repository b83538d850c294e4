"""What the benchmarks share: the machine they ran on, its measured limits, and the report layout.

Most benchmarks write the same JSON layout, what was measured, how peak memory was taken, the
machine and the cases, so that results from different benchmarks and machines can be read side
by side. A speed figure means little without the machine's own limit beside it, so
`gemm_rates` measures the matrix-multiply rate a benchmark's achieved FLOP rate is divided by,
in the same process and run, and `count_flops` counts the FLOPs of a step.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

GEMM_N = 4096
# Emulated bf16 (a CPU without bf16 instructions) is timed at this size at most, once.
EMULATED_BF16_N = 1024


def machine_info() -> dict:
    # Imported here, not at the top: a parent process that only launches cases in their own
    # processes then loads torch when it needs it, not on import of this module.
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                if line.startswith("model name")), "unknown")
    # bf16 convs are fast with AMX (Intel) or AVX512-BF16 (AMD Zen 4): record which is there.
    info = {"cpu": cpu, "cores": os.cpu_count(), "amx_bf16": "amx_bf16" in cpuinfo,
            "avx512_bf16": "avx512_bf16" in cpuinfo, "torch": torch.__version__,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def load_avg() -> float:
    """The 1-minute load average: above the thread count, other jobs shared the cores."""
    return round(os.getloadavg()[0], 2)


def time_calls(fn: Callable[[], object], warmup: int, repeats: int,
               sync: Callable[[], None] | None = None) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` after `warmup` untimed ones (allocator growth,
    kernel choice); `sync` waits for queued device work, without which a GPU call only queues."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def rate_summary(flop: float, seconds: list[float]) -> dict:
    """Best and median of timed calls of `flop` FLOPs each: on a shared machine other jobs only
    slow a call down, so the fastest is the best estimate of what the hardware does."""
    best, median = min(seconds), statistics.median(seconds)
    return {"best_s": round(best, 5), "median_s": round(median, 5), "calls": len(seconds),
            "best_gflop_s": round(flop / best / 1e9, 2), "median_gflop_s": round(flop / median / 1e9, 2)}


def bf16_in_hardware(device: str) -> bool:
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = machine_info()
    return flags["amx_bf16"] or flags["avx512_bf16"]


def timed_calls(bf16: bool, device: str, warmup: int, repeats: int) -> tuple[int, int]:
    """(warm-up calls, timed calls) of a case: one each for emulated bf16 (no bf16 instructions),
    whose rate only needs to show that it is no peak, and as asked otherwise."""
    return (1, 1) if bf16 and not bf16_in_hardware(device) else (warmup, repeats)


def gemm_rates(n: int = GEMM_N, warmup: int = 2, repeats: int = 5, device: str = "cpu") -> dict:
    """torch.mm of two n×n matrices in fp32 and bf16 at the current torch thread count: the
    matrix-multiply peak an achieved FLOP rate is read against (2·n³ FLOPs per call).

    bf16 runs on every CPU, emulated where the CPU has no bf16 instructions (`bf16_in_hardware`
    says which); on CUDA only where the GPU supports it. Emulated bf16 is timed once, at
    n = EMULATED_BF16_N at most (its own `n` says so): on an AVX2-only EPYC a 4096² emulated call
    takes tens of seconds, and its rate only needs to show that it is no peak. `peak_gflop_s` is
    the faster dtype's best rate: what the machine can do at all, whichever precision a model
    runs in."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else None
    result = {"device": device, "n": n, "threads": torch.get_num_threads(), "warmup_calls": warmup,
              "load_avg_1min_before": load_avg()}
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.rand(n, n, generator=generator).to(device) for _ in range(2))
    dtypes = {"fp32": torch.float32}
    if device != "cuda" or torch.cuda.is_bf16_supported():
        dtypes["bf16"] = torch.bfloat16
    for name, dtype in dtypes.items():
        calls = timed_calls(dtype == torch.bfloat16, device, warmup, repeats)
        emulated = calls != (warmup, repeats)
        size = min(n, EMULATED_BF16_N) if emulated else n
        x, y = (m[:size, :size].contiguous().to(dtype) for m in (a, b))
        result[name] = rate_summary(2.0 * size ** 3, time_calls(lambda: torch.mm(x, y), *calls, sync))
        if emulated:
            result[name]["n"] = size
    if "bf16" in result:
        result["bf16"]["bf16_in_hardware"] = bf16_in_hardware(device)
    result["peak_dtype"] = max(dtypes, key=lambda name: result[name]["best_gflop_s"])
    result["peak_gflop_s"] = result[result["peak_dtype"]]["best_gflop_s"]
    result["load_avg_1min_after"] = load_avg()
    return result


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of a conv's backward: the input gradient and the weight gradient each take as many
    multiply-adds as the forward pass (every product x·w of the forward has one grad·w and one
    grad·x), and the forward count of torch's `conv_flop_count` is right for grouped convs.

    torch's own formula (2.14) counts the weight gradient of a grouped conv `groups` times over,
    64× for a 64-channel depthwise conv: it gave the EfficientNet-Lite0 U-Net's 8×192² training
    step 204 GFLOP, where its convolutions and matrix multiplies do 29."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` as torch's FlopCounterMode counts them: matrix multiplies and
    convolutions (forward and backward), not element-wise ops, which are memory-bound anyway."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop})
    with counter:
        fn()
    return counter.get_total_flops()


def achieved(flop_per_step: int, step_s: float, gemm: dict, precision: str) -> dict:
    """A step's FLOP rate and its fraction of the GEMM peak measured in the same run; also of
    the GEMM in the step's own precision, which says how much of the gap the dtype explains."""
    gflop_s = flop_per_step / step_s / 1e9
    own = gemm.get(precision, {}).get("best_gflop_s")
    return {"achieved_gflop_s": round(gflop_s, 2),
            "fraction_of_gemm_peak": round(gflop_s / gemm["peak_gflop_s"], 4),
            "fraction_of_gemm_same_precision": round(gflop_s / own, 4) if own else None}


def write_report(out: Path, what: str, peak_memory: str | None, cases: list[dict], **extra) -> None:
    """The JSON report: `extra` holds what a benchmark measures once for all its cases (the GEMM
    peak, the load around the whole run, a ratio between cases)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"what": what, **({"peak_memory": peak_memory} if peak_memory else {}),
              "machine": machine_info(), **extra, "cases": cases}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
