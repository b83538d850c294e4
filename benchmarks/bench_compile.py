"""What `train.compile: true` buys: a segmenter's training step eager and through torch.compile.

For each model and precision, one fresh process runs the eager step and another the compiled
one (`nn.Module.compile`, as `core.stage.Stage` does), alternating over `--rounds`, so machine
load hits both alike. Reported: the fastest step of each, their ratio (eager / compiled: above 1
means compiling pays), and the compiled process's first step, which includes the compilation
(paid once per input size, so it only pays off over a long run).

    python benchmarks/bench_compile.py              # → results/compile.json
    python benchmarks/bench_compile.py --models effnet_lite0_unet --steps 2 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import write_report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "compile.json"
# name → segmenter kwargs, batch, crop: the demo's segmenter and a dense VGG16 one.
MODELS = {"effnet_lite0_unet": ({"pretrained": False}, 8, 160),
          "encdec_unpool": ({"width": 0.5}, 8, 192)}
NUM_CLASSES = 6


def run_case(model_name: str, precision: str, compiled: bool, steps: int, threads: int, device: str = "cpu",
             backend: str = "inductor", size: int | None = None) -> dict:
    """`steps` timed training steps after a first one (the compilation, when compiled). `backend`
    other than inductor only for smoke runs (gpu_check.py --dry-run: "eager" traces the model
    without generating code); `size` replaces the model's crop for them too."""
    import torch
    import torch.nn.functional as F

    from wsseg.models import build_segmenter

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    kwargs, batch, crop_px = MODELS[model_name]
    size = size or crop_px
    model = build_segmenter(model_name, NUM_CLASSES, **kwargs).train().to(device, memory_format=torch.channels_last)
    if compiled:
        model.compile(backend=backend)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.rand(batch, 3, size, size).to(device, memory_format=torch.channels_last)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size)).to(device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def step() -> float:
        sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        sync()
        return time.perf_counter() - start

    first = step()
    times = [step() for _ in range(steps)]
    return {"model": model_name, "precision": precision, "compiled": compiled, "batch": batch, "crop_px": size,
            "device": device, "backend": backend if compiled else None, "threads": threads,
            "first_step_s": round(first, 3), "step_s_all": [round(t, 3) for t in times],
            "step_s_best": round(min(times), 3), "load_avg_1min_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--run-case", nargs=3, help=argparse.SUPPRESS)  # child: model precision compiled
    args = parser.parse_args()

    if args.run_case:
        model_name, precision, compiled = args.run_case
        print(json.dumps(run_case(model_name, precision, compiled == "1", args.steps, args.threads)))
        return

    load_before = round(os.getloadavg()[0], 2)
    cases = []
    for model_name in args.models:
        for precision in args.precisions:
            runs: dict[bool, list[dict]] = {False: [], True: []}
            for _ in range(args.rounds):
                for compiled in (False, True):
                    child = subprocess.run(
                        [sys.executable, __file__, "--run-case", model_name, precision, "1" if compiled else "0",
                         "--steps", str(args.steps), "--threads", str(args.threads)],
                        capture_output=True, text=True, check=True)
                    runs[compiled].append(json.loads(child.stdout.strip().splitlines()[-1]))
            eager = min(r["step_s_best"] for r in runs[False])
            compiled_s = min(r["step_s_best"] for r in runs[True])
            case = {"model": model_name, "precision": precision, "batch": runs[False][0]["batch"],
                    "crop_px": runs[False][0]["crop_px"], "threads": args.threads,
                    "eager_step_s": eager, "compiled_step_s": compiled_s,
                    "speedup_compiled": round(eager / compiled_s, 3),
                    "compiled_first_step_s": min(r["first_step_s"] for r in runs[True]),
                    "runs": runs[False] + runs[True]}
            cases.append(case)
            print(f"{model_name:20s} {precision}: eager {eager:.3f} s, compiled {compiled_s:.3f} s "
                  f"({case['speedup_compiled']:.2f}×), first compiled step {case['compiled_first_step_s']:.1f} s",
                  flush=True)
    write_report(args.out,
                 what=f"training step (forward + cross-entropy + backward + AdamW), channels-last, eager vs "
                      f"nn.Module.compile; load average before {load_before}",
                 peak_memory="not measured", cases=cases)


if __name__ == "__main__":
    main()
