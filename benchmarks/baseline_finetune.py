#!/usr/bin/env python
"""An independent fine-tuning baseline that guards wsseg's task-i recipe.

What a short script written from scratch reaches on the N1 pixel labels alone: the ImageNet
EfficientNet-Lite0 encoder, a light FPN decoder, AdamW with the encoder at a tenth of the
decoder's learning rate, large random crops, horizontal flips, plain cross-entropy. It shares
with wsseg only what makes the numbers comparable: the dataset loader, the split and the
whole-tile evaluation (one confusion matrix over the test tiles). Its own model, crops and
training loop are written here, so a weakness of wsseg's recipe shows up as a gap.

    python benchmarks/baseline_finetune.py --config configs/dubai.yaml --set data.root=DIR \\
        --split-seeds 0,1,2 --out benchmarks/results/baseline_dubai.json

Each seed also records the wall time, so that wsseg's task i can be compared at equal budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info  # noqa: E402
from wsseg.core.evaluate import evaluate_tiles  # noqa: E402
from wsseg.core.io import atomic_write_json  # noqa: E402
from wsseg.models.efficientnet_lite import FEATURE_CHANNELS, EfficientNetLite0, load_efficientnet_lite0_imagenet  # noqa: E402,E501
from wsseg.pipeline.config_files import load_config  # noqa: E402
from wsseg.pipeline.data import load_source, make_split_for  # noqa: E402


class FPNSegmenter(nn.Module):
    """EfficientNet-Lite0 features at strides 4–32, each projected to `width` channels, summed
    top-down, then one 3×3 conv and a classifier at stride 4, upsampled to the input."""

    def __init__(self, num_classes: int, width: int = 96):
        super().__init__()
        self.encoder = load_efficientnet_lite0_imagenet(EfficientNetLite0(include_head=False))
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in FEATURE_CHANNELS[1:])
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.Conv2d(width, num_classes, 1))

    def forward(self, x):
        features = self.encoder.encoder_features(x)[1:]
        y = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            y = lateral(feature) + F.interpolate(y, size=feature.shape[-2:], mode="bilinear", align_corners=False)
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


def random_crops(images, labels, crop: int, batch: int, rng: np.random.Generator):
    """`batch` crops of `crop` px (padded with ignore where a tile is smaller), random h-flips."""
    xs, ys = [], []
    for _ in range(batch):
        k = int(rng.integers(len(images)))
        image, label = images[k], labels[k]
        h, w = label.shape
        top, left = int(rng.integers(max(h - crop, 0) + 1)), int(rng.integers(max(w - crop, 0) + 1))
        x = np.zeros((crop, crop, 3), np.uint8)
        y = np.full((crop, crop), 255, np.uint8)
        part = image[top:top + crop, left:left + crop]
        x[:part.shape[0], :part.shape[1]] = part
        y[:part.shape[0], :part.shape[1]] = label[top:top + crop, left:left + crop]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        xs.append(torch.from_numpy(x.copy()).permute(2, 0, 1).float() / 255)
        ys.append(torch.from_numpy(y.astype(np.int64)))
    return torch.stack(xs), torch.stack(ys)


def run_seed(cfg, seed: int, steps: int, crop: int, batch: int, lr: float, encoder_lr_mult: float) -> dict:
    cfg = replace(cfg, split=replace(cfg.split, seed=seed))
    source = load_source(cfg)
    split = make_split_for(cfg, source)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    images = [source.image(t) for t in split.labelled]
    labels = [source.label(t) for t in split.labelled]
    model = FPNSegmenter(source.classes.num_classes)
    encoder = list(model.encoder.parameters())
    encoder_ids = {id(p) for p in encoder}
    optimizer = torch.optim.AdamW([{"params": encoder, "lr": lr * encoder_lr_mult},
                                   {"params": [p for p in model.parameters() if id(p) not in encoder_ids]}],
                                  lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: (1 - it / steps) ** 0.9)
    model.train()
    for step in range(steps):
        x, y = random_crops(images, labels, crop, batch, rng)
        loss = F.cross_entropy(model(x), y, ignore_index=source.classes.ignore_index)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"seed {seed}: loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0:
            print(f"seed {seed} step {step + 1}/{steps}: loss {loss.item():.4f}", flush=True)
    trained = time.perf_counter() - started
    result = evaluate_tiles(model, source, split.test, cfg.eval.window_px, cfg.eval.stride_px, cfg.eval.batch_size,
                            "cpu")
    metrics = result.metrics(source.classes)
    return {"seed": seed, "miou": metrics["miou"], "per_class_iou": {n: v["iou"] for n, v in metrics["per_class"].items()},
            "train_seconds": trained, "labelled": list(split.labelled), "test": list(split.test)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--split-seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, help="training steps (default: the config's epochs × iters_per_epoch)")
    parser.add_argument("--crop", type=int, default=352)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--encoder-lr-mult", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    steps = args.steps or cfg.train.epochs * cfg.train.iters_per_epoch
    seeds = [int(s) for s in args.split_seeds.split(",")]
    runs = [run_seed(cfg, s, steps, args.crop, args.batch, args.lr, args.encoder_lr_mult) for s in seeds]
    mious = [r["miou"] for r in runs]
    report = {"what": "independent fine-tuning baseline, task i (N1 pixel labels only)", "config": args.config,
              "overrides": args.overrides, "steps": steps, "crop": args.crop, "batch": args.batch, "lr": args.lr,
              "encoder_lr_mult": args.encoder_lr_mult, "threads": args.threads, "machine": machine_info(),
              "miou_mean": float(np.mean(mious)), "miou_std": float(np.std(mious, ddof=1)) if len(mious) > 1 else None,
              "runs": runs}
    atomic_write_json(args.out, report)
    print(json.dumps({"miou": mious, "mean": report["miou_mean"], "std": report["miou_std"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
