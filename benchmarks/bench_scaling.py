"""Data-parallel scaling: one process against two (DistributedDataParallel over gloo) on this CPU,
and what an 8-GPU run would spend on the gradient all-reduce.

Measured: training steps of the demo's segmenter (EfficientNet-Lite0 U-Net, global batch 8 at
160 px, AdamW) with one process of T threads against T processes of one thread each, the global
batch split among them, so both use the same cores on the same work. On a 2-core machine there
is little to gain: the two processes only trade OpenMP's synchronisation inside each op for an
all-reduce of the gradients per step.

Estimated (not measured: no GPU here): the bytes each step all-reduces are the float32 gradients
of every trainable parameter, counted from the models themselves; a ring all-reduce over N GPUs
moves 2·(N−1)/N of them through each GPU's link. The link speeds are stated assumptions, the
step times must come from a GPU run (`bench_models.py` on CUDA).

    python benchmarks/bench_scaling.py            # → results/scaling.json
    python benchmarks/bench_scaling.py --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import write_report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "scaling.json"
GLOBAL_BATCH, CROP_PX, NUM_CLASSES = 8, 160, 6
# Assumed all-reduce bus bandwidths (GB/s) for the written estimate, typical of NCCL's own
# benchmarks on such links; a user's cluster may differ by 2×.
LINKS_GB_S = {"NVLink (one machine, A100/H100 class)": 150.0, "PCIe 4.0 x16, no NVLink": 12.0,
              "100 Gb/s InfiniBand between machines": 11.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(rank: int, world: int, threads: int, steps: int, port: int, out: Path) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from wsseg.models import build_segmenter

    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_segmenter("effnet_lite0_unet", NUM_CLASSES, pretrained=False).train()
    model = model.to(memory_format=torch.channels_last)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = GLOBAL_BATCH // world
    images = torch.rand(batch, 3, CROP_PX, CROP_PX).to(memory_format=torch.channels_last)
    labels = torch.randint(0, NUM_CLASSES, (batch, CROP_PX, CROP_PX))

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images).float(), labels).backward()
        optimizer.step()
        return time.perf_counter() - start

    step()
    times = [step() for _ in range(steps)]
    if world > 1:
        # A step ends when the slowest process is done: take each step's maximum over ranks.
        gathered = [None] * world
        dist.all_gather_object(gathered, times)
        times = [max(ts) for ts in zip(*gathered)]
        dist.destroy_process_group()
    if rank == 0:
        out.write_text(json.dumps(times))


def measure(world: int, threads: int, steps: int) -> list[float]:
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"wsseg_scaling_{os.getpid()}_{world}.json"
    port = free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(rank), str(world), str(threads),
                               str(steps), str(port), str(out)]) for rank in range(world)]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError(f"a scaling worker failed ({world} processes)")
    times = json.loads(out.read_text())
    out.unlink()
    return times


def gradient_bytes() -> dict[str, int]:
    """float32 gradient bytes all-reduced per step, per model of the project."""
    from wsseg.models import build_segmenter
    from wsseg.models.single_stage import SingleStageSegmenter

    models = {"effnet_lite0_unet": build_segmenter("effnet_lite0_unet", NUM_CLASSES, pretrained=False),
              "encdec_unpool (width 1)": build_segmenter("encdec_unpool", NUM_CLASSES, width=1.0),
              "fcn8s": build_segmenter("fcn8s", NUM_CLASSES),
              "single-stage ResNet-38 (VOC, 20 classes)": SingleStageSegmenter(20)}
    return {name: 4 * sum(p.numel() for p in m.parameters() if p.requires_grad) for name, m in models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        rank, world, threads, steps, port, out = args.worker
        worker(int(rank), int(world), int(threads), int(steps), int(port), Path(out))
        return

    cores = min(2, os.cpu_count() or 1)
    load_before = round(os.getloadavg()[0], 2)
    runs: dict[str, list[float]] = {"1 process": [], f"{cores} processes": []}
    for _ in range(args.rounds):  # alternating, so load changes hit both
        runs["1 process"] += measure(1, cores, args.steps)
        runs[f"{cores} processes"] += measure(cores, 1, args.steps)
    best = {k: min(v) for k, v in runs.items()}
    one, many = best["1 process"], best[f"{cores} processes"]
    measured = {"model": "effnet_lite0_unet", "global_batch": GLOBAL_BATCH, "crop_px": CROP_PX, "cores": cores,
                "one_process_threads": cores, "step_s_best": best,
                "step_s_median": {k: round(statistics.median(v), 3) for k, v in runs.items()},
                "speedup_processes_over_threads": round(one / many, 3),
                "load_avg_1min_before": load_before, "load_avg_1min_after": round(os.getloadavg()[0], 2)}
    print(f"1 process × {cores} threads {one:.3f} s/step, {cores} processes × 1 thread {many:.3f} s/step "
          f"({one / many:.2f}×)")

    estimate = []
    for name, size in gradient_bytes().items():
        for link, gb_s in LINKS_GB_S.items():
            gpus = 8
            seconds = 2 * (gpus - 1) / gpus * size / (gb_s * 1e9)
            estimate.append({"model": name, "gradient_mib": round(size / 2**20, 1), "link": link,
                             "assumed_bus_gb_s": gb_s, "gpus": gpus,
                             "allreduce_s_per_step": round(seconds, 4)})
    for row in estimate:
        print(f"{row['model']:42s} {row['gradient_mib']:8.1f} MiB  {row['link']:40s} "
              f"{1e3 * row['allreduce_s_per_step']:7.1f} ms per step")
    write_report(args.out,
                 what="data-parallel training step, 1 process vs one process per core (gloo), same global batch; "
                      "and an 8-GPU all-reduce estimate from the gradient bytes at assumed link speeds: "
                      "scaling stays near-linear while that time is small against the GPU step "
                      "(DDP overlaps it with the backward pass)",
                 peak_memory="not measured", cases=[measured, *estimate])


if __name__ == "__main__":
    main()
