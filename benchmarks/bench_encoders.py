#!/usr/bin/env python
"""Size, FLOPs and CPU training speed of the segmenters on timm encoders (issue 28): each encoder
under each head (timm_unet, timm_fpn, deeplabv3plus).

Per case: the parameters; the GFLOPs of one 512² image, forward, counted by torch's
FlopCounterMode (`common.count_flops`: convolutions and matrix multiplies); and the wall time of
one training step (forward, cross-entropy, backward, Adam) on a batch of 2 random 256² crops, fp32,
one thread, the fastest of `--steps` after `--warmup` untimed ones, since other jobs on the
machine only ever slow a step down (the median and the load average are kept beside it). Random
weights: the speed does not depend on them.

    python benchmarks/bench_encoders.py            # every case → results/encoders.json, docs/models.md
    python benchmarks/bench_encoders.py --cases resnet50/timm_unet --steps 1 --no-docs

The table in docs/models.md, between its two `bench_encoders` markers, is rewritten from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import count_flops, load_avg, time_calls, write_report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "encoders.json"
DOCS = REPO / "docs" / "models.md"
BEGIN, END = "<!-- bench_encoders: begin -->", "<!-- bench_encoders: end -->"
ENCODERS = ("resnet50", "convnext_tiny", "mobilenetv3_large_100", "efficientnet_b0", "vit_tiny_patch16_224")
HEADS = ("timm_unet", "timm_fpn", "deeplabv3plus")
CASES = [f"{encoder}/{head}" for encoder in ENCODERS for head in HEADS]
NUM_CLASSES = 6  # the ISPRS classes
BATCH, CROP_PX, FLOP_PX = 2, 256, 512


def run_case(case: str, warmup: int, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from wsseg.models import build_segmenter

    encoder, head = case.split("/")
    torch.manual_seed(0)
    model = build_segmenter(head, NUM_CLASSES, encoder=encoder, pretrained=False)
    parameters = sum(p.numel() for p in model.parameters())

    model.eval()
    image = torch.rand(1, 3, FLOP_PX, FLOP_PX)
    with torch.no_grad():
        flop = count_flops(lambda: model(image))

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.rand(BATCH, 3, CROP_PX, CROP_PX)
    labels = torch.randint(0, NUM_CLASSES, (BATCH, CROP_PX, CROP_PX))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    load_before = load_avg()
    seconds = time_calls(step, warmup, steps)
    return {"case": case, "encoder": encoder, "head": head, "parameters_m": round(parameters / 1e6, 2),
            "gflop_per_512px_image": round(flop / 1e9, 1), "step_s_best": round(min(seconds), 3),
            "step_s_median": round(statistics.median(seconds), 3), "step_s_all": [round(s, 3) for s in seconds],
            "load_avg_1min_before": load_before, "load_avg_1min_after": load_avg()}


def markdown_table(report: dict) -> str:
    machine = report["machine"]
    lines = [f"Measured {report['date']} on {machine['cpu']} ({machine['cores']} cores, torch {machine['torch']}), "
             f"{report['threads']} thread, fp32, while other jobs ran (1-minute load average "
             f"{report['load_avg_1min_before']}–{report['load_avg_1min_after']} on {machine['cores']} cores): the "
             f"times are the fastest of {report['timed_steps']} steps, and still no more than an upper bound.", "",
             f"| encoder | head | parameters (M) | GFLOPs / {FLOP_PX}² image | CPU train step, {BATCH} × "
             f"{CROP_PX}² (s) |", "|---|---|---:|---:|---:|"]
    for case in report["cases"]:
        lines.append(f"| `{case['encoder']}` | `{case['head']}` | {case['parameters_m']:.1f} | "
                     f"{case['gflop_per_512px_image']:.1f} | {case['step_s_best']:.2f} |")
    return "\n".join(lines)


def write_docs(report: dict, path: Path = DOCS) -> None:
    """Rewrite the table between the markers of `path`, leaving the rest of the page as it is."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} section to write the table into")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{BEGIN}\n{markdown_table(report)}\n{END}{tail}")
    print(f"wrote the table into {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-docs", action="store_true", help="leave docs/models.md as it is")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    load_before = load_avg()
    cases = []
    for case in args.cases:
        started = time.perf_counter()
        result = run_case(case, args.warmup, args.steps)
        cases.append(result)
        print(f"{case:40s} {result['parameters_m']:6.1f} M  {result['gflop_per_512px_image']:6.1f} GFLOP/512²  "
              f"step {result['step_s_best']:6.2f} s (median {result['step_s_median']:.2f}, load "
              f"{result['load_avg_1min_before']}→{result['load_avg_1min_after']}; {time.perf_counter() - started:.0f} s "
              f"in all)", flush=True)
    extra = {"date": time.strftime("%Y-%m-%d"), "threads": 1, "precision": "fp32", "batch": BATCH, "crop_px": CROP_PX,
             "flop_px": FLOP_PX, "warmup_steps": args.warmup, "timed_steps": args.steps,
             "load_avg_1min_before": load_before, "load_avg_1min_after": load_avg(),
             "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    write_report(args.out, "parameters, forward GFLOPs of one 512² image, and the fastest fp32 one-thread training "
                 "step (2 × 256², Adam) of the segmenters on timm encoders, random weights", None, cases, **extra)
    if not args.no_docs:
        write_docs(json.loads(args.out.read_text()))


if __name__ == "__main__":
    main()
