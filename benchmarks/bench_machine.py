"""What this machine can do at all: the matrix-multiply peak and a 3×3 conv's rate.

Every other benchmark's speed is read against these numbers: a training step at 10 % of the
GEMM peak has room to gain, one at 80 % has not. Per torch thread count (and on the GPU, if
there is one):

- GEMM: `torch.mm` of two 4096×4096 matrices in fp32 and bf16, best and median of several timed
  calls after warm-up ones, GFLOP/s = 2·n³ / t (`common.gemm_rates`). bf16 is timed on every
  CPU, also one without bf16 instructions, where it is emulated (recorded as such);
- conv: one 3×3 convolution, 8×128×64×64 → 128 channels, forward and backward (gradients of
  input and weight, as in the middle of a network), in fp32 and in bf16 autocast with
  channels-last, the format the bf16 training cases use. FLOPs as FlopCounterMode counts them.
  Emulated bf16 is timed once after one warm-up call (as the GEMM's).

    python benchmarks/bench_machine.py                        # → results/machine.json
    python benchmarks/bench_machine.py --threads 1 --gemm-n 1024 --repeats 2 --out /tmp/machine.json  # smoke

The bench_*.py that report a fraction of the peak measure it again at their own start: a ratio
is only meaningful between numbers measured in one run, under one load.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script (run_all.py), only benchmarks/ is on the path.
sys.path.insert(0, str(REPO))

from benchmarks.common import (GEMM_N, count_flops, gemm_rates, load_avg, rate_summary,  # noqa: E402
                               time_calls, timed_calls, write_report)

RESULTS = REPO / "benchmarks" / "results" / "machine.json"


def conv_rates(batch: int, channels: int, size_px: int, warmup: int, repeats: int, device: str) -> dict:
    """3×3 conv forward + backward in fp32 (contiguous) and bf16 autocast (channels-last)."""
    import torch
    from torch import nn

    sync = torch.cuda.synchronize if device == "cuda" else None
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1).to(device)
    image = torch.rand(batch, channels, size_px, size_px, device=device)
    grad_out = torch.rand(batch, channels, size_px, size_px, device=device)
    result = {"device": device, "input_shape": [batch, channels, size_px, size_px], "out_channels": channels,
              "kernel": 3, "threads": torch.get_num_threads(), "load_avg_1min_before": load_avg()}
    for name, dtype, memory_format in (("fp32", None, torch.contiguous_format),
                                       ("bf16_channels_last", torch.bfloat16, torch.channels_last)):
        layer = conv.to(memory_format=memory_format)
        x = image.contiguous(memory_format=memory_format).requires_grad_(True)
        g = grad_out.contiguous(memory_format=memory_format)

        def forward_backward():
            layer.zero_grad(set_to_none=True)
            x.grad = None
            with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype is not None):
                out = layer(x)
            out.backward(g.to(out.dtype))

        flop = count_flops(forward_backward)
        calls = timed_calls(dtype is not None, device, warmup, repeats)
        result[name] = {"gflop_per_call": round(flop / 1e9, 3),
                        **rate_summary(flop, time_calls(forward_backward, *calls, sync))}
    result["load_avg_1min_after"] = load_avg()
    return result


def measure(device: str, threads: int, args) -> dict:
    import torch

    torch.set_num_threads(threads)
    gemm = gemm_rates(args.gemm_n, args.warmup, args.repeats, device)
    conv = conv_rates(args.conv_batch, args.conv_channels, args.conv_px, args.warmup, args.repeats, device)
    for name in ("fp32", "bf16_channels_last"):
        # The conv's rate against the GEMM peak: the best a conv layer does here, the ceiling
        # a whole network's step is then read against.
        conv[name]["fraction_of_gemm_peak"] = round(conv[name]["best_gflop_s"] / gemm["peak_gflop_s"], 4)
    return {"device": device, "threads": threads, "gemm": gemm, "conv3x3": conv}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_threads = sorted({min(2, os.cpu_count() or 1), 1}, reverse=True)
    parser.add_argument("--threads", type=int, nargs="+", default=default_threads,
                        help="CPU thread counts, those the other benchmarks run at")
    parser.add_argument("--gemm-n", type=int, default=GEMM_N)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--conv-batch", type=int, default=8)
    parser.add_argument("--conv-channels", type=int, default=128)
    parser.add_argument("--conv-px", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    load_before = load_avg()
    cases = [measure("cpu", threads, args) for threads in args.threads]
    if torch.cuda.is_available():
        cases.append(measure("cuda", torch.get_num_threads(), args))
    for case in cases:
        gemm, conv = case["gemm"], case["conv3x3"]
        print(f"{case['device']} {case['threads']} thread(s): GEMM {gemm['n']}² fp32 "
              f"{gemm['fp32']['best_gflop_s']} GFLOP/s, bf16 {gemm.get('bf16', {}).get('best_gflop_s')} GFLOP/s; "
              f"conv3x3 fp32 {conv['fp32']['best_gflop_s']}, bf16 channels-last "
              f"{conv['bf16_channels_last']['best_gflop_s']} GFLOP/s (load {gemm['load_avg_1min_before']}→"
              f"{conv['load_avg_1min_after']})", flush=True)
    write_report(
        args.out,
        what="machine limits: torch.mm n×n GFLOP/s in fp32 and bf16 (2·n³/t, best and median of timed calls), "
             "3×3 conv forward+backward GFLOP/s in fp32 and bf16 autocast + channels-last",
        peak_memory=None, cases=cases, load_avg_1min_before=load_before, load_avg_1min_after=load_avg())


if __name__ == "__main__":
    main()
