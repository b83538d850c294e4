#!/usr/bin/env python
"""What wsseg does on one CUDA GPU, in about 8 minutes (issue 27): `benchmarks/gpu_check.sh` runs it.

The steps, in this order, each timed and with the peak GPU memory it reached
(`torch.cuda.max_memory_allocated`, reset before it; the torchrun step's from its own process):
  demo          `wsseg train --task all --config configs/demo.yaml` with AMP bf16 (segmenters and
                single-stage model; everything else as the demo has it), its test mIoUs
  predict       `wsseg predict` with the demo's task ii model on a 10,000 × 10,000 px 3-band
                GeoTIFF written here (`bench_predict_geotiff.write_raster`), in bf16
  single_stage  the single-stage model's training step (`bench_single_stage.wsseg_case`: ResNet-38,
                2 × 321², PAMR, both losses, SGD) in fp32, bf16 and fp16, and the 16-bit speed-ups
  torchrun      `torchrun --nproc_per_node 1` of this script's worker: NCCL initialised, an
                all-reduce checked, DDP training steps of the demo segmenter
  compile       the demo segmenter's training step eager and through torch.compile
                (`bench_compile.run_case`, bf16): the first compiled step and the speed-up after it
The demo and predict run in this process through `wsseg.cli.main`, as the commands would.
The report, benchmarks/results/gpu_<device name>.json, is rewritten after every step, so a check
cut short keeps what it measured; no step starts after `--start-by-s` (7 minutes).

`--dry-run` runs the same steps on the CPU at toy sizes (demo.yaml shrunk by overrides, a 512 px
GeoTIFF, one or two steps, compile with dynamo's "eager" backend, gloo for torchrun) and writes
its report to `--out` or a temporary file: the check of this script that `make test` runs.

    python benchmarks/gpu_check.py [--out FILE_OR_DIR] [--keep WORK_DIR]
    python benchmarks/gpu_check.py --dry-run [--out FILE_OR_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import write_report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# The most telling first: when time runs short, compile (whose first step alone may take minutes) goes.
STEPS = ("demo", "predict", "single_stage", "torchrun", "compile")
# No step starts after this many seconds, so that the last one ends within about 8 minutes.
START_BY_S = 7 * 60

# demo.yaml at toy sizes for --dry-run: two steps an epoch, one epoch a stage, 64 px tiles, no
# download (ImageNet weights off), no time budgets.
DRY_RUN_DEMO = [
    "data.options.num_tiles=6", "data.options.tile_px=[64, 64]",
    "split.n_labelled=2", "split.n_tagged=2", "split.n_val=1",
    "model.options.pretrained=false",
    "train.epochs=1", "train.iters_per_epoch=2", "train.batch_size=2", "train.crop_px=64", "train.max_minutes=null",
    "eval.window_px=64", "eval.stride_px=64", "eval.batch_size=2", "eval.num_triptychs=0",
    "weak.tag_crop_px=32",
    "weak.single_stage.pretrained=null", "weak.single_stage.epochs=1", "weak.single_stage.iters_per_epoch=2",
    "weak.single_stage.batch_size=2", "weak.single_stage.crop_px=64", "weak.single_stage.max_minutes=null",
    "weak.single_stage.self_supervised_from_epoch=2",
    "weak.pseudo.scales=[1.0]",
]


class Sizes:
    """How much each step does: the real check's sizes, or --dry-run's toy ones."""

    def __init__(self, dry_run: bool):
        self.raster_px = 256 if dry_run else 10_000
        # Windows per forward pass: the demo's 4 leave a GPU mostly idle. A dry run's blocks are
        # smaller than its raster, so that it reads and writes more than one.
        self.predict_batch = None if dry_run else 16
        self.predict_block_px = 128 if dry_run else None
        # A dry run's single-stage model is the demo's (EfficientNet-Lite0, width 0.5): ResNet-38
        # steps in the CPU's emulated bf16 take minutes.
        self.single_stage_options = {"backbone": "effnet_lite0", "width": 0.5} if dry_run else None
        self.single_stage_crop_px = 32 if dry_run else None  # None: bench_single_stage's 321
        self.single_stage_calls = (0, 1) if dry_run else (3, 10)  # (warm-up, timed) steps
        self.compile_size_px = 32 if dry_run else None  # None: bench_compile's 160
        self.compile_steps = 1 if dry_run else 5
        self.compile_backend = "eager" if dry_run else "inductor"
        self.ddp_steps = 1 if dry_run else 10
        self.ddp_crop_px = 32 if dry_run else 160


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' → 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


class Memory:
    """Peak GPU memory of a step in this process; on the CPU, this process's peak RSS so far
    (a high-water mark over everything before too, so only the first step's is its own)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> dict:
        import torch

        if not self.cuda:
            return {"peak_gpu_memory_mib": None,
                    "peak_rss_mib_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
        torch.cuda.synchronize()
        return {"peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20),
                "peak_gpu_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20)}


def demo(work: Path, device: str, dry_run: bool) -> dict:
    from wsseg.cli import main as wsseg

    run = work / "demo"
    overrides = [f"device={device}", f"data.root={work / 'synthetic_vaihingen'}", "train.precision=bf16",
                 *(DRY_RUN_DEMO if dry_run else [])]
    args = ["train", "--task", "all", "--config", str(REPO / "configs" / "demo.yaml"), "--out", str(run)]
    for override in overrides:
        args += ["--set", override]
    code = wsseg(args)
    if code != 0:
        raise RuntimeError(f"wsseg {shlex.join(args)} exited with {code}")
    comparison = json.loads((run / "comparison.json").read_text())
    minutes = {stage: json.loads((run / stage / "done.json").read_text()).get("minutes")
               for stage in ("task_i", "semi", "single_stage", "task_ii") if (run / stage / "done.json").exists()}
    return {"command": shlex.join(["wsseg", *args]),
            "test_miou": {arm: comparison.get(arm, {}).get("miou") for arm in ("task_i", "semi", "task_ii")},
            "stage_minutes": {stage: round(m, 2) for stage, m in minutes.items() if m is not None},
            "checkpoint": str(run / "task_ii" / "best.pt")}


def predict(work: Path, device: str, sizes: Sizes, checkpoint: Path) -> dict:
    from benchmarks.bench_predict_geotiff import write_raster
    from wsseg.cli import main as wsseg

    raster, out = work / f"scene_{sizes.raster_px}.tif", work / "predicted"
    started = time.perf_counter()
    write_raster(raster, sizes.raster_px, sizes.raster_px)
    write_s = time.perf_counter() - started
    args = ["predict", "--checkpoint", str(checkpoint), str(raster), "--out", str(out), "--device", device,
            "--precision", "bf16", *(["--batch-size", str(sizes.predict_batch)] if sizes.predict_batch else []),
            *(["--block", str(sizes.predict_block_px)] if sizes.predict_block_px else [])]
    started = time.perf_counter()
    code = wsseg(args)
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"wsseg {shlex.join(args)} exited with {code}")
    written = sorted(p.name for p in out.iterdir())
    pixels = sizes.raster_px ** 2
    raster.unlink()
    return {"raster_px": [sizes.raster_px, sizes.raster_px], "write_raster_s": round(write_s, 1),
            "predict_s": round(seconds, 2), "mpix_per_s": round(pixels / seconds / 1e6, 3), "outputs": written,
            "batch_size": sizes.predict_batch or "the checkpoint's eval.batch_size"}


def single_stage(device: str, sizes: Sizes) -> dict:
    import torch

    from benchmarks import bench_single_stage as bench
    from benchmarks.common import time_calls

    sync = torch.cuda.synchronize if device == "cuda" else None
    crop_px = sizes.single_stage_crop_px or bench.CROP_PX
    cases = {}
    for name in ("fp32", "bf16_channels_last", "fp16_channels_last"):
        torch.manual_seed(0)
        model, step, _, info = bench.wsseg_case(name, crop_px, device, sizes.single_stage_options)
        seconds = time_calls(step, *sizes.single_stage_calls, sync)
        cases[name] = {**info, "step_s_best": round(min(seconds), 4),
                       "step_s_median": round(statistics.median(seconds), 4)}
        del model, step
    fp32 = cases["fp32"]["step_s_best"]
    return {"model": f"SingleStageSegmenter {sizes.single_stage_options or '(ResNet-38, width 1)'}",
            "batch": bench.BATCH, "crop_px": crop_px,
            "num_classes": bench.NUM_CLASSES, "cases": cases,
            "speedup_bf16_over_fp32": round(fp32 / cases["bf16_channels_last"]["step_s_best"], 3),
            "speedup_fp16_over_fp32": round(fp32 / cases["fp16_channels_last"]["step_s_best"], 3)}


def compile_step(device: str, sizes: Sizes) -> dict:
    import torch

    from benchmarks.bench_compile import run_case

    runs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        runs["compiled" if compiled else "eager"] = run_case(
            "effnet_lite0_unet", "bf16", compiled, sizes.compile_steps, torch.get_num_threads(), device,
            backend=sizes.compile_backend, size=sizes.compile_size_px)
    torch._dynamo.reset()
    eager, compiled = runs["eager"]["step_s_best"], runs["compiled"]["step_s_best"]
    return {"model": "effnet_lite0_unet", "precision": "bf16", "backend": sizes.compile_backend, "runs": runs,
            "eager_step_s": eager, "compiled_step_s": compiled, "speedup_compiled": round(eager / compiled, 3),
            "compiled_first_step_s": runs["compiled"]["first_step_s"]}


def torchrun(work: Path, device: str, sizes: Sizes) -> dict:
    out = work / "ddp.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", __file__,
               "--ddp-worker", str(out), "--device", device, "--ddp-steps", str(sizes.ddp_steps),
               "--ddp-crop-px", str(sizes.ddp_crop_px)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_NUM_THREADS", str(min(8, os.cpu_count() or 1)))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return {"command": "torchrun " + " ".join(command[3:]), **json.loads(out.read_text())}


def ddp_worker(out: Path, device: str, steps: int, crop_px: int) -> None:
    """One process under torchrun: the process group over NCCL (gloo on the CPU) even alone, which
    wsseg's own training skips for a single process, an all-reduce, then DDP training steps."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from benchmarks.common import time_calls
    from wsseg.models import build_segmenter

    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    where = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([float(rank + 1)], device=where)
    dist.all_reduce(total)
    torch.manual_seed(0)
    model = build_segmenter("effnet_lite0_unet", 6, pretrained=False).train()
    model = torch.nn.parallel.DistributedDataParallel(model.to(where, memory_format=torch.channels_last),
                                                      device_ids=[local_rank] if cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.rand(8, 3, crop_px, crop_px, device=where).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 6, (8, crop_px, crop_px), device=where)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(where.type, dtype=torch.bfloat16):
            logits = model(images)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = time_calls(step, 1, steps, torch.cuda.synchronize if cuda else None)
    report = {"backend": dist.get_backend(), "world_size": world,
              "all_reduce_ok": total.item() == world * (world + 1) / 2,
              "model": "effnet_lite0_unet (DDP)", "batch": 8, "crop_px": crop_px, "precision": "bf16",
              "step_s_best": round(min(seconds), 4), "step_s_median": round(statistics.median(seconds), 4),
              "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None}
    dist.destroy_process_group()
    if rank == 0:
        out.write_text(json.dumps(report))


def report_path(out: Path | None, dry_run: bool, device_name: str) -> Path:
    name = f"gpu_{slug(device_name)}.json"
    if out is None:
        # A dry run's figures are no GPU's: never into benchmarks/results.
        return Path(tempfile.mkdtemp(prefix="wsseg-gpu-check-")) / name if dry_run else RESULTS / name
    return out / name if out.is_dir() else out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy sizes")
    parser.add_argument("--out", type=Path, help="report file, or a folder for gpu_<device>.json "
                                                 "(default benchmarks/results/; --dry-run: a temporary folder)")
    parser.add_argument("--keep", type=Path, help="work folder to keep (demo run, predictions); default temporary")
    parser.add_argument("--start-by-s", type=float, default=START_BY_S, help="start no step after this many seconds")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="a subset of the steps")
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)  # under torchrun: report file
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--ddp-steps", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-crop-px", type=int, default=160, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, args.device, args.ddp_steps, args.ddp_crop_px)
        return 0

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); --dry-run runs the steps "
              "on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    device_name = "dry run (cpu)" if args.dry_run else torch.cuda.get_device_name()
    out = report_path(args.out, args.dry_run, device_name)
    sizes, memory = Sizes(args.dry_run), Memory(device == "cuda")
    work = args.keep or Path(tempfile.mkdtemp(prefix="wsseg-gpu-check-work-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, dict] = {}

    def save() -> None:
        write_report(out, what=f"wsseg on one {'CPU (dry run: toy sizes)' if args.dry_run else 'CUDA GPU'}: "
                               "the demo with AMP bf16, predict on a GeoTIFF, the single-stage training step "
                               "in fp32/bf16/fp16, compile off/on, torchrun with one process",
                     peak_memory="torch.cuda.max_memory_allocated per step, reset before it (the torchrun "
                                 "step: its worker's own); on the CPU this process's peak RSS so far",
                     cases=[{"step": name, **result} for name, result in results.items()],
                     dry_run=args.dry_run, device=device, device_name=device_name,
                     total_s=round(time.perf_counter() - started, 1), start_by_s=args.start_by_s,
                     all_ok=all(r["ok"] for r in results.values()))

    runs = {"demo": lambda: demo(work, device, args.dry_run),
            "predict": lambda: predict(work, device, sizes, Path(results["demo"]["checkpoint"])),
            "single_stage": lambda: single_stage(device, sizes),
            "compile": lambda: compile_step(device, sizes),
            "torchrun": lambda: torchrun(work, device, sizes)}
    for name in (s for s in STEPS if s in args.steps):
        elapsed = time.perf_counter() - started
        if elapsed > args.start_by_s:
            results[name] = {"ok": False, "skipped": f"{elapsed:.0f} s in, past --start-by-s {args.start_by_s:.0f}"}
        elif name == "predict" and not results.get("demo", {}).get("ok"):
            results[name] = {"ok": False, "skipped": "predict uses the demo's task ii model: the demo did not finish"}
        else:
            print(f"gpu_check: {name} ({elapsed:.0f} s in)", flush=True)
            memory.reset()
            step_started = time.perf_counter()
            try:
                result = {"ok": True, **runs[name]()}
            except Exception as err:  # one failed step must not cost the others' figures
                result = {"ok": False, "error": f"{type(err).__name__}: {err}",
                          "traceback": traceback.format_exc()[-4000:]}
            results[name] = {**result, "seconds": round(time.perf_counter() - step_started, 1),
                             **({} if name == "torchrun" else memory.peak())}
            print(f"gpu_check: {name} {'done' if result['ok'] else 'FAILED: ' + result['error']} in "
                  f"{results[name]['seconds']} s", flush=True)
        save()
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    failed = [name for name, result in results.items() if not result["ok"]]
    print(f"gpu_check: {out}" + (f"; failed or skipped: {', '.join(failed)}" if failed else "; every step ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
