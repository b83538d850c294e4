"""Training-step speed and peak memory of the wsseg segmenters on this CPU.

One training step = forward, cross-entropy, backward, Adam update, on random data (speed does
not depend on the values). Each case runs in a fresh subprocess so that its peak memory is its
own: "peak" is the process's peak resident set size (`ru_maxrss`, what the OS had to give it),
which includes the Python/PyTorch runtime (~0.3-0.5 GiB); `baseline_rss_mib` is the RSS after
building the model and optimizer, just before the first step, so peak − baseline is roughly
activations, gradients, optimizer state and allocator caching.

    python benchmarks/bench_models.py                      # every case → results/models.json
    python benchmarks/bench_models.py --cases encdec_w1_2x256_fp32 --steps 3 --rounds 1

The machine may be shared with other jobs, which only ever slow a step down. So the headline
time is the fastest step seen (`step_s_best`), over `--rounds` interleaved passes through all
cases (each pass a fresh process per case); medians, CPU seconds and the 1-minute load average
are kept beside it. Each case is measured with 2 threads and with 1: two OpenMP threads wait
for each other at every op, so when another job takes a core their times explode (10× seen
here), while a 1-thread run whose CPU seconds equal its wall time provably had its core.

Against the machine's limit: each case's FLOPs per step are counted once (FlopCounterMode, one
extra untimed forward + backward after the timed steps, in the first round), and
`achieved_gflop_s` = FLOPs / `step_s_best`; `fraction_of_gemm_peak` divides it by the faster
of the fp32 and bf16 GEMM rates (`common.gemm_rates`) measured at this process's start at the
same thread count, so that the ratio comes from one run under one load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script (run_all.py, and each case's child process), only benchmarks/ is on the path.
sys.path.insert(0, str(REPO))

from benchmarks.common import GEMM_N, achieved, count_flops, gemm_rates, load_avg, write_report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "models.json"

# name → segmenter, its kwargs, batch, crop size (square), precision, channels_last.
CASES = {
    "encdec_w1_2x256_fp32": ("encdec_unpool", {"width": 1.0}, 2, 256, "fp32", False),
    "encdec_w1_2x256_bf16_cl": ("encdec_unpool", {"width": 1.0}, 2, 256, "bf16", True),
    "encdec_w0.25_8x192_fp32": ("encdec_unpool", {"width": 0.25}, 8, 192, "fp32", False),
    "encdec_w0.25_8x192_bf16_cl": ("encdec_unpool", {"width": 0.25}, 8, 192, "bf16", True),
    "encdec_w0.5_8x192_fp32": ("encdec_unpool", {"width": 0.5}, 8, 192, "fp32", False),
    "encdec_w0.5_8x192_bf16_cl": ("encdec_unpool", {"width": 0.5}, 8, 192, "bf16", True),
    "effnet_unet_8x192_fp32_cl": ("effnet_lite0_unet", {"pretrained": False}, 8, 192, "fp32", True),
    "effnet_unet_8x192_bf16_cl": ("effnet_lite0_unet", {"pretrained": False}, 8, 192, "bf16", True),
}
NUM_CLASSES = 6  # the ISPRS classes


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(name: str, warmup: int, steps: int, threads: int, flops: bool = False) -> dict:
    """Time `steps` training steps of one case after `warmup` untimed ones (this process)."""
    import torch
    import torch.nn.functional as F

    from wsseg.models import build_segmenter

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    segmenter, kwargs, batch, size, precision, channels_last = CASES[name]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_segmenter(segmenter, NUM_CLASSES, **kwargs).train().to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(batch, 3, size, size).to(memory_format=memory_format)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size))

    def forward_backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()

    def step() -> None:
        forward_backward()
        optimizer.step()

    baseline = rss_mib()
    load_before = os.getloadavg()[0]
    for _ in range(warmup):
        step()
    times, cpu_times = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    load_after = os.getloadavg()[0]
    # After the timed steps and the peak: the counter's bookkeeping must touch neither. Adam's
    # update is element-wise, which the counter does not count, so forward + backward is the step.
    flop = count_flops(forward_backward) if flops else None
    return {
        "case": name, "segmenter": segmenter, "kwargs": kwargs, "batch": batch,
        "crop_px": size, "precision": precision, "channels_last": channels_last,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "threads": threads, "warmup_steps": warmup, "timed_steps": steps,
        "step_s_all": [round(t, 3) for t in times],
        "step_s_median": round(statistics.median(times), 3),
        # CPU seconds of all threads: ≈ threads × wall time when nothing else runs.
        "cpu_s_per_step_median": round(statistics.median(cpu_times), 3),
        "peak_rss_mib": round(peak), "baseline_rss_mib": round(baseline),
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(load_after, 2),
        **({"gflop_per_step": round(flop / 1e9, 3)} if flop is not None else {}),
    }


def run_child(name: str, warmup: int, steps: int, threads: int, flops: bool) -> dict:
    """run_case in a fresh process, so that its peak memory is its own."""
    child = subprocess.run(
        [sys.executable, __file__, "--run-case", name, "--warmup", str(warmup),
         "--steps", str(steps), "--threads", str(threads), *(["--count-flops"] if flops else [])],
        capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict], gemm: dict) -> dict:
    """One case at one thread count over its rounds: the fastest step is the headline, read
    against `gemm`, the GEMM rates measured at this thread count in this run."""
    per_round = ("step_s_all", "step_s_median", "cpu_s_per_step_median", "peak_rss_mib",
                 "baseline_rss_mib", "load_avg_1min_before", "load_avg_1min_after")
    summary = {k: v for k, v in runs[0].items() if k not in per_round}
    best = min(t for run in runs for t in run["step_s_all"])
    return summary | {
        "step_s_best": best,
        "train_images_per_s": round(summary["batch"] / best, 2),
        **achieved(summary["gflop_per_step"] * 1e9, best, gemm, summary["precision"]),
        "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
        "baseline_rss_mib": min(run["baseline_rss_mib"] for run in runs),
        "rounds": [{k: run[k] for k in per_round} for run in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[min(2, os.cpu_count() or 1), 1],
                        help="thread counts to measure, each in its own set of processes")
    parser.add_argument("--gemm-n", type=int, default=GEMM_N, help="matrix side of the GEMM peak")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--run-case", help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()

    if args.run_case:
        print(json.dumps(run_case(args.run_case, args.warmup, args.steps, args.threads[0], args.count_flops)))
        return

    import torch

    load_before = load_avg()
    gemm = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        gemm[threads] = gemm_rates(args.gemm_n)
        print(f"GEMM {args.gemm_n}², {threads} thread(s): fp32 {gemm[threads]['fp32']['best_gflop_s']} GFLOP/s, "
              f"bf16 {gemm[threads]['bf16']['best_gflop_s']} GFLOP/s", flush=True)

    results = []
    for threads in args.threads:
        rounds: dict[str, list[dict]] = {name: [] for name in args.cases}
        for round_index in range(args.rounds):
            for name in args.cases:
                # FLOPs depend on the shapes alone: counted once, in the first round.
                result = run_child(name, args.warmup, args.steps, threads, flops=round_index == 0)
                rounds[name].append(result)
                print(f"{threads} thread(s), round {round_index}: {name:28s} best "
                      f"{min(result['step_s_all']):7.3f} s, median {result['step_s_median']:7.3f} "
                      f"s, CPU {result['cpu_s_per_step_median']:7.3f} s/step, peak "
                      f"{result['peak_rss_mib']} MiB (load {result['load_avg_1min_before']}→"
                      f"{result['load_avg_1min_after']})", flush=True)
        for name, runs in rounds.items():
            results.append(summarise(runs, gemm[threads]))

    print(f"{'case':30s} threads   s/step   img/s  peak MiB  GFLOP/s  of GEMM peak")
    for r in results:
        print(f"{r['case']:30s} {r['threads']:7d} {r['step_s_best']:8.3f} "
              f"{r['train_images_per_s']:7.2f} {r['peak_rss_mib']:9d} {r['achieved_gflop_s']:8.1f} "
              f"{r['fraction_of_gemm_peak']:13.3f}")
    write_report(
        args.out,
        what="training step (forward + cross-entropy + backward + Adam) on random data; "
             "step_s_best = fastest timed step over all rounds (other jobs only slow steps down)",
        peak_memory="peak resident set size of a fresh process running only this case "
                    "(ru_maxrss), runtime included; baseline_rss_mib = RSS before the first step",
        cases=results,
        gemm_peak={str(threads): rates for threads, rates in gemm.items()},
        load_avg_1min_before=load_before, load_avg_1min_after=load_avg(),
    )


if __name__ == "__main__":
    main()
