"""Does the training DataLoader keep up with the training step? The demo's task-i loader alone at
0, 1 and 2 workers, against the samples per second the demo's segmenter step consumes.

Loader: the task-i training dataset of configs/demo.yaml, built by the code training builds it
with (`pipeline.data.load_source`, `make_split_for`, `pipeline.segmenter.training_crops`): random
160 px crops of the N1 tiles with the dihedral augmentations, in batches of 8, shuffled, the last
partial batch dropped, as `Stage.loader` batches them. The synthetic tiles are generated into a
temporary folder first (or read from `--data-root`). Per worker count, a fresh dataset (a warm
tile cache in the main process would be inherited by forked workers) and loader, then:

- `first_batch_s`: the time to the first batch, worker start-up and first tile reads included;
- `samples_per_s`: over `--epochs` whole epochs after the one the first batch opened.

The loader is training's own (`core.loaders.training_loader`): its workers persist between epochs
and keep their tile caches (each sample carries its epoch to them), so `samples_per_s` is the
workers' steady rate and training pays `first_batch_s` once per stage. With 0 workers the crops are made in
the main process at its torch thread count (`loading_threads`): on a busy machine two OpenMP
threads wait for each other at every small op (measured on 2 cores at load ≈ 3: 21 crops/s in
the main process at 2 threads, 2300 at 1).

Step: the demo's segmenter training step (effnet_lite0_unet at random init, which costs what
the ImageNet weights cost; AdamW, median class weights, fp32 channels-last, as the config says)
on one batch of this loader, timed over `--steps` steps after `--warmup`, at torch's default
thread count, as training runs. `loader_over_step` = loader samples/s ÷ step samples/s: above 1
the loader alone outpaces the step; in training they share the cores, so a margin is needed.

    python benchmarks/bench_loader.py                              # → results/loader.json
    python benchmarks/bench_loader.py --workers 0 1 --epochs 1 --steps 1 --warmup 0 --out /tmp/loader.json  # smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script (run_all.py), only benchmarks/ is on the path.
sys.path.insert(0, str(REPO))

from benchmarks.common import load_avg, write_report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "loader.json"
CONFIG = REPO / "configs" / "demo.yaml"


def task_i_run(config: Path, data_root: Path, run_dir: Path):
    """The config, and the `Run` task i trains from: its dataset (generated on first use) and split."""
    from wsseg.pipeline.config_files import load_config
    from wsseg.pipeline.data import Run, load_source, make_split_for

    cfg = load_config(config, [f"data.root={data_root}"])
    source = load_source(cfg)
    return cfg, Run(cfg, source, make_split_for(cfg, source), run_dir)


def task_i_dataset(cfg, run):
    from wsseg.pipeline.segmenter import training_crops

    return training_crops(cfg, run, pseudo_masks=None)


def time_loader(cfg, run, workers: int, epochs: int) -> dict:
    import torch

    from wsseg.core.loaders import set_loader_epoch, training_loader

    dataset = task_i_dataset(cfg, run)
    loader = training_loader(dataset, cfg.train.batch_size, num_workers=workers)
    load_before = load_avg()
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first_batch_s = time.perf_counter() - start
    for _ in batches:  # the rest of the first epoch: workers warm up, tiles reach their caches
        pass
    samples, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        set_loader_epoch(loader, epoch)
        for images, _, _ in loader:
            samples += images.shape[0]
    seconds = time.perf_counter() - start
    return {"workers": workers, "persistent_workers": workers > 0,
            # torch threads of the process that makes the crops: DataLoader workers run with 1.
            "loading_threads": 1 if workers else torch.get_num_threads(), "batch": cfg.train.batch_size,
            "crop_px": cfg.train.crop_px, "samples_per_epoch": len(dataset), "timed_epochs": epochs,
            "first_batch_s": round(first_batch_s, 3), "timed_samples": samples, "seconds": round(seconds, 3),
            "samples_per_s": round(samples / seconds, 1),
            "load_avg_1min_before": load_before, "load_avg_1min_after": load_avg()}


def time_step(cfg, run, warmup: int, steps: int) -> dict:
    """The demo's segmenter step (`pipeline.segmenter.train_segmenter`'s, without the loader)."""
    import torch

    from wsseg.core.distributed import autocast_dtype
    from wsseg.core.losses import weighted_cross_entropy
    from wsseg.core.optim import build_optimizer
    from wsseg.models import parameter_groups
    from wsseg.pipeline.config import weight_decay_of
    from wsseg.pipeline.segmenter import build_model, segmenter_class_weights

    classes = run.source.classes
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, classes.num_classes, pretrained=False).train()
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(parameter_groups(cfg.model.name, model, cfg.train.encoder_lr_mult),
                                cfg.train.optimizer, cfg.train.lr, weight_decay_of(cfg.train))
    class_weights = segmenter_class_weights(cfg, run.source, run.split.labelled)
    images, masks, sample_weights = next(iter(torch.utils.data.DataLoader(
        task_i_dataset(cfg, run), batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)))
    images = images.contiguous(memory_format=memory_format)
    pixel_weights = sample_weights[:, None, None].expand_as(masks)
    amp_dtype = autocast_dtype(cfg.train.precision, torch.device("cpu"))

    def step() -> None:
        with torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = model(images)
            loss = weighted_cross_entropy(logits, masks, class_weights, pixel_weights, classes.ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    load_before = load_avg()
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    return {"segmenter": cfg.model.name, "batch": cfg.train.batch_size, "crop_px": cfg.train.crop_px,
            "precision": cfg.train.precision, "channels_last": cfg.train.channels_last,
            "optimizer": cfg.train.optimizer, "threads": torch.get_num_threads(), "warmup_steps": warmup,
            "step_s_all": [round(s, 3) for s in seconds], "step_s_best": round(best, 3),
            "step_s_median": round(statistics.median(seconds), 3),
            # The fastest step is the headline: other jobs only ever slow a step down.
            "samples_per_s": round(cfg.train.batch_size / best, 1),
            "load_avg_1min_before": load_before, "load_avg_1min_after": load_avg()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--data-root", type=Path, help="the config's synthetic dataset, generated there if "
                        "missing (default: a temporary folder)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per worker count")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_before = load_avg()
    with tempfile.TemporaryDirectory() as work:
        cfg, run = task_i_run(args.config, args.data_root or Path(work) / "data", Path(work) / "run")
        step = time_step(cfg, run, args.warmup, args.steps)
        print(f"step: {step['segmenter']} {step['batch']}×{step['crop_px']}² {step['precision']}: best "
              f"{step['step_s_best']} s = {step['samples_per_s']} samples/s ({step['threads']} threads, load "
              f"{step['load_avg_1min_before']}→{step['load_avg_1min_after']})", flush=True)
        cases = []
        for workers in args.workers:
            case = time_loader(cfg, run, workers, args.epochs)
            case["loader_over_step"] = round(case["samples_per_s"] / step["samples_per_s"], 2)
            cases.append(case)
            print(f"loader, {workers} worker(s): {case['samples_per_s']} samples/s = {case['loader_over_step']}× "
                  f"the step's; first batch after {case['first_batch_s']} s (load {case['load_avg_1min_before']}→"
                  f"{case['load_avg_1min_after']})", flush=True)
    write_report(
        args.out,
        what=f"task-i training DataLoader alone ({args.config.name}: training_crops, batch "
             f"{cfg.train.batch_size}, crop {cfg.train.crop_px}) vs the segmenter step's consumption",
        peak_memory=None, cases=cases, step=step, config=args.config.name,
        load_avg_1min_before=load_before, load_avg_1min_after=load_avg())


if __name__ == "__main__":
    main()
