"""One training step of the single-stage segmenter on this CPU: time and peak memory.

A step is what training does from epoch 5 on: forward (ResNet-38 + head), PAMR on the detached
masks, pseudo labels, classification + self-supervised loss, backward, SGD update with the
three parameter groups. Random weights and data (speed does not depend on the values), batch
2 × 3 × 321 × 321, full width. Each case runs in a fresh subprocess so its peak resident set
size (`ru_maxrss`, runtime included) is its own.

    python benchmarks/bench_single_stage.py                 # → results/single_stage.json
    python benchmarks/bench_single_stage.py --cases fp32 --steps 1 --warmup 0

The machine is shared: the 1-minute load average around each case is recorded; a load well
above the thread count means the times are inflated. For scale, the published
code (Araslanov & Roth, CVPR 2020) measured here ran at ≈23 s per fp32 step (PAMR ≈3 s) and ≈3.5 GiB peak with 2 threads.
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

from benchmarks.common import write_report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "single_stage.json"

# name → (precision, channels_last)
CASES = {"fp32": ("fp32", False), "bf16_channels_last": ("bf16", True)}
NUM_CLASSES, BATCH, CROP_PX = 20, 2, 321  # VOC foreground classes, as in the paper


def run_case(name: str, warmup: int, steps: int, threads: int) -> dict:
    import torch

    from wsseg.models.single_stage import SingleStageSegmenter

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    precision, channels_last = CASES[name]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = SingleStageSegmenter(NUM_CLASSES).train().to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.param_groups(lr=1e-3), lr=1e-3, momentum=0.9)
    images = torch.rand(BATCH, 3, CROP_PX, CROP_PX).to(memory_format=memory_format)
    tags = torch.zeros(BATCH, NUM_CLASSES)
    tags[0, [2, 11]] = 1
    tags[1, 7] = 1

    def step() -> dict:
        parts = {}
        optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(images, refine=False)
        parts["forward_s"] = time.perf_counter() - start

        start = time.perf_counter()
        out["masks_pamr"] = model.refine_masks(images, out["masks"])
        parts["pamr_s"] = time.perf_counter() - start

        start = time.perf_counter()
        loss = model.classification_loss(out["cls"], tags)
        loss = loss + model.self_supervised_loss(out, tags, crop_size=images.shape[-2:])
        loss.backward()
        parts["loss_backward_s"] = time.perf_counter() - start

        start = time.perf_counter()
        optimizer.step()
        parts["optimizer_s"] = time.perf_counter() - start
        parts["step_s"] = sum(parts.values())
        return parts

    baseline_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load_before = os.getloadavg()[0]
    for _ in range(warmup):
        step()
    timed = [step() for _ in range(steps)]
    median = {k: round(statistics.median(t[k] for t in timed), 2) for k in timed[0]}
    return {
        "case": name, "precision": precision, "channels_last": channels_last,
        "batch": BATCH, "crop_px": CROP_PX, "width": 1.0, "num_classes": NUM_CLASSES,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "threads": threads, "warmup_steps": warmup, "timed_steps": steps,
        **{f"{k}_median": v for k, v in median.items()},
        "step_s_all": [round(t["step_s"], 2) for t in timed],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "rss_before_first_step_gib": round(baseline_mib / 1024, 2),
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--run-case", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()

    if args.run_case:
        print(json.dumps(run_case(args.run_case, args.warmup, args.steps, args.threads)))
        return

    results = []
    for name in args.cases:
        child = subprocess.run(
            [sys.executable, __file__, "--run-case", name, "--warmup", str(args.warmup),
             "--steps", str(args.steps), "--threads", str(args.threads)],
            capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{name:20s} {result['step_s_median']:6.2f} s/step (forward "
              f"{result['forward_s_median']}, PAMR {result['pamr_s_median']}, loss+backward "
              f"{result['loss_backward_s_median']}, SGD {result['optimizer_s_median']})  "
              f"peak {result['peak_rss_gib']} GiB  (load {result['load_avg_1min_before']}→"
              f"{result['load_avg_1min_after']})", flush=True)
        results.append(result)

    write_report(
        args.out,
        what="single-stage training step: forward + PAMR + pseudo labels + classification "
             "and self-supervised loss + backward + SGD, ResNet-38 width 1, 2×3×321×321",
        peak_memory="peak resident set size of a fresh process running only this case "
                    "(ru_maxrss), runtime and model included",
        cases=results,
    )


if __name__ == "__main__":
    main()
