"""One training step of the single-stage segmenter on this CPU: time, peak memory, and against
the published code and the machine's GEMM peak.

A step is what training does from epoch 5 on: forward (ResNet-38 + head), PAMR on the detached
masks, pseudo labels, classification + self-supervised loss, backward, SGD update with the
three parameter groups. Random weights and data (speed does not depend on the values), batch
2 × 3 × 321 × 321, full width, VOC's 20 classes plus the constant background. Each case runs in
a fresh subprocess so its peak resident set size (`ru_maxrss`, runtime included) is its own.

    python benchmarks/bench_single_stage.py                 # → results/single_stage.json
    python benchmarks/bench_single_stage.py --published ../1-stage-wseg   # and the published step
    python benchmarks/bench_single_stage.py --cases fp32 --steps 1 --warmup 0 --rounds 1 \\
        --crop-px 129 --gemm-n 1024 --out /tmp/single_stage.json          # smoke run

The machine is shared: the cases are run in `--rounds` interleaved passes (every case once per
round, each in a fresh process), so a busy spell slows all of them, and the 1-minute load
average around each is recorded; a load well above the thread count means inflated times.

**Against the published code** (`--published DIR`, a checkout of github.com/visinf/1-stage-wseg
by Araslanov & Roth, CVPR 2020; imported from DIR at run time, never copied here): its
`SoftMaxAE` network on the ResNet-38 backbone, built as its train.py builds it
(`network_factory(cfg.NET)` with core/config.py's defaults under configs/voc_resnet38.yaml: 21
classes, PAMR with 10 iterations over dilations 1-24, focal penalty, stochastic gate ψ = 0.3),
its parameter groups and its `BaseTrainer.get_optim` SGD, and the step of its
`DecTrainer.step` after the pretraining epochs: forward (which in the published code includes
PAMR, the pseudo labels and the mask loss), soft-margin classification loss + mask loss,
backward, SGD update. The same batch, classes and tags as wsseg's cases, fp32, contiguous
(the published code has neither autocast nor channels-last). `published_over_wsseg` is its
step time over each wsseg case's, from the same run. What the published code needs and does
not get here, worked around at run time only:
- ImageNet weights (`NET.PRE_WEIGHTS_PATH`, a file its README says to download): the network
  class is subclassed with a `_init_weights` that loads nothing, so the backbone keeps PyTorch's
  default random init; its own init of the new layers runs as written;
- CUDA (`nn.DataParallel(...).cuda()` in train.py): the network runs unwrapped on the CPU;
- the `six` package (imported by core/config.py for `six.string_types`), when not installed: a
  stand-in module with `string_types = (str,)` is put in `sys.modules` before the import;
- the data loader (VOC on disk): its denormalisation (`image * std + mean` per channel, for
  PAMR's raw image) is done on the random batch, normalised with the network's own mean/std.
PAMR's share of the published forward is timed by hooks on its PAMR module.

**Against the machine's limit**: each case's FLOPs per step are counted once (FlopCounterMode,
one extra untimed forward + loss + backward after the timed steps, in the first round), and
`achieved_gflop_s` = FLOPs / `step_s_best`; `fraction_of_gemm_peak` divides it by the faster
of the fp32 and bf16 GEMM rates measured at this process's start (`common.gemm_rates`).

**bf16 against fp32** (`bf16_vs_fp32_first_step_loss`): the loss of the first step on the same
weights, batch and dropout draws (seeded), computed in one process for fp32, fp32 channels-last
and bf16 channels-last. The like-for-like pair is fp32 vs bf16 both channels-last: a memory
format lays dropout's random draws out differently, so fp32 vs fp32 channels-last shows how far
the loss moves from other draws alone. At random weights no mask reaches the pseudo-label
threshold (0.2): the pseudo labels are all "ignore" and the step's self-supervised term is 0 in
every precision, which compares nothing. So that loss is also compared on shared targets, the
argmax of the fp32 channels-last pass's masks, with every image counting (gating "class").
Within tolerance means torch.testing's bf16 default (rtol 1.6e-2, atol 1e-5).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script (run_all.py, and each case's child process), only benchmarks/ is on the path.
sys.path.insert(0, str(REPO))

from benchmarks.common import GEMM_N, achieved, count_flops, gemm_rates, load_avg, write_report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "single_stage.json"

# name → (precision, channels_last). fp16 is for CUDA (benchmarks/gpu_check.py): training refuses
# it on the CPU, so this script's own run leaves it out.
CASES = {"fp32": ("fp32", False), "bf16_channels_last": ("bf16", True), "fp16_channels_last": ("fp16", True)}
CPU_CASES = ["fp32", "bf16_channels_last"]
AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
PUBLISHED = "published_fp32"
NUM_CLASSES, BATCH, CROP_PX = 20, 2, 321  # VOC foreground classes, as in the paper
PARTS = ("forward_s", "pamr_s", "loss_backward_s", "optimizer_s")
# torch.testing.assert_close's defaults for bfloat16.
BF16_RTOL, BF16_ATOL = 1.6e-2, 1e-5


class Laps:
    """Seconds between successive calls, summed per name: a step's parts, in the order they run."""

    def __init__(self):
        self.parts = dict.fromkeys(PARTS, 0.0)
        self.start = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.parts[name] += now - self.start
        self.start = now


def batch_of(crop_px: int):
    """The batch every case trains on, the published one included: random images in [0, 1] from
    a generator of their own (building a model draws from the global one, and the two models
    draw differently) and fixed tags (two classes in the first image, one in the second)."""
    import torch

    images = torch.rand(BATCH, 3, crop_px, crop_px, generator=torch.Generator().manual_seed(0))
    tags = torch.zeros(BATCH, NUM_CLASSES)
    tags[0, [2, 11]] = 1
    tags[1, 7] = 1
    return images, tags


def wsseg_forward(model, images, precision: str, lap=lambda name: None) -> dict:
    """wsseg's forward pass of a training step, with the PAMR masks the pseudo labels come from."""
    import torch

    dtype = getattr(torch, AMP_DTYPES.get(precision, "bfloat16"))
    with torch.autocast(images.device.type, dtype=dtype, enabled=precision in AMP_DTYPES):
        out = model(images, refine=False)
    lap("forward_s")
    out["masks_pamr"] = model.refine_masks(images, out["masks"])
    lap("pamr_s")
    return out


def wsseg_case(name: str, crop_px: int, device: str = "cpu", model_options: dict | None = None):
    """wsseg's model, optimizer and batch for case `name` on `device`, and its step (which returns
    its Laps; on CUDA they are launch times, a caller times whole steps with a synchronize). fp16
    scales the loss as training does (`core.train.fit`). `model_options` (backbone, width) replace
    the ResNet-38 of width 1 for smoke runs."""
    import torch

    from wsseg.models.single_stage import SingleStageSegmenter

    precision, channels_last = CASES[name]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = SingleStageSegmenter(NUM_CLASSES, **(model_options or {})).train().to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.param_groups(lr=1e-3), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
    images, tags = batch_of(crop_px)
    images, tags = images.to(device, memory_format=memory_format), tags.to(device)

    def forward_backward(lap=lambda name: None) -> None:
        optimizer.zero_grad(set_to_none=True)
        out = wsseg_forward(model, images, precision, lap)
        loss = model.classification_loss(out["cls"], tags)
        loss = loss + model.self_supervised_loss(out, tags, crop_size=images.shape[-2:])
        scaler.scale(loss).backward()
        lap("loss_backward_s")

    def step() -> Laps:
        laps = Laps()
        forward_backward(laps)
        scaler.step(optimizer)
        scaler.update()
        laps("optimizer_s")
        return laps

    info = {"source": "wsseg", "precision": precision, "channels_last": channels_last}
    return model, step, forward_backward, info


def import_published(published: Path):
    """The published code's modules, imported from the checkout `published` (see the docstring)."""
    sys.path.insert(0, str(published))
    if importlib.util.find_spec("six") is None:
        sys.modules["six"] = types.SimpleNamespace(string_types=(str,))
    from base_trainer import BaseTrainer
    from core.config import cfg, cfg_from_file
    from losses import get_criterion
    from models.stage_net import network_factory

    cfg_from_file(str(published / "configs" / "voc_resnet38.yaml"))
    return cfg, network_factory, get_criterion, BaseTrainer


def published_case(published: Path, crop_px: int):
    """The published model, optimizer and batch, and its training step (which returns its Laps)."""
    import torch

    cfg, network_factory, get_criterion, BaseTrainer = import_published(published)

    class RandomInit(network_factory(cfg.NET)):
        def _init_weights(self, path_to_weights):
            pass  # no ImageNet weights here: the backbone keeps PyTorch's default init

    model = RandomInit(cfg.NET, pre_weights=None, num_classes=NUM_CLASSES + 1)
    # As train.py: groups and optimizer first, then train(), which freezes the fixed layers.
    optimizer = BaseTrainer.get_optim(model.parameter_groups(cfg.NET.LR, cfg.NET.WEIGHT_DECAY), cfg.NET)
    model.train()
    criterion = get_criterion(cfg.NET.LOSS)
    raw, tags = batch_of(crop_px)
    mean = torch.tensor(model.normalize.mean)[None, :, None, None]
    std = torch.tensor(model.normalize.std)[None, :, None, None]
    images = (raw - mean) / std

    pamr_seconds = []
    model._aff.register_forward_pre_hook(lambda module, args: pamr_seconds.append(-time.perf_counter()))
    model._aff.register_forward_hook(lambda module, args, out: pamr_seconds.append(time.perf_counter()))

    def forward_backward(lap=lambda name: None) -> None:
        optimizer.zero_grad()
        image_raw = images.clone() * std + mean  # what DecTrainer.step gets from dataset.denorm
        pamr_seconds.clear()
        cls_out, _, _, _, _, loss_mask = model(images, image_raw, tags)
        lap("forward_s")
        loss = criterion(cls_out, tags).mean() + cfg.NET.MASK_LOSS_BCE * loss_mask.mean()
        loss.backward()
        lap("loss_backward_s")

    def step() -> Laps:
        laps = Laps()
        forward_backward(laps)
        optimizer.step()
        laps("optimizer_s")
        # PAMR ran inside the forward: move its time from there to its own part.
        pamr = sum(pamr_seconds)
        laps.parts["forward_s"] -= pamr
        laps.parts["pamr_s"] += pamr
        return laps

    info = {"source": "published (visinf/1-stage-wseg, configs/voc_resnet38.yaml)", "precision": "fp32",
            "channels_last": False}
    return model, step, forward_backward, info


def run_case(name: str, warmup: int, steps: int, threads: int, crop_px: int, flops: bool,
             published: Path | None) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if name == PUBLISHED:
        model, step, forward_backward, info = published_case(published, crop_px)
    else:
        model, step, forward_backward, info = wsseg_case(name, crop_px)

    baseline_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load_before = os.getloadavg()[0]
    for _ in range(warmup):
        step()
    timed = [step().parts for _ in range(steps)]
    for parts in timed:
        parts["step_s"] = sum(parts.values())
    median = {k: round(statistics.median(t[k] for t in timed), 2) for k in timed[0]}
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    load_after = os.getloadavg()[0]
    # After the timed steps and the peak: the counter's bookkeeping must touch neither. SGD's
    # update is element-wise, which the counter does not count, so forward + backward is the step.
    flop = count_flops(forward_backward) if flops else None
    return {
        "case": name, **info,
        "batch": BATCH, "crop_px": crop_px, "width": 1.0, "num_classes": NUM_CLASSES,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "trainable_parameters_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 1),
        "threads": threads, "warmup_steps": warmup, "timed_steps": steps,
        **{f"{k}_median": v for k, v in median.items()},
        "step_s_all": [round(t["step_s"], 2) for t in timed],
        "peak_rss_gib": round(peak_gib, 2),
        "rss_before_first_step_gib": round(baseline_mib / 1024, 2),
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(load_after, 2),
        **({"gflop_per_step": round(flop / 1e9, 3)} if flop is not None else {}),
    }


def loss_check(threads: int, crop_px: int) -> dict:
    """The first step's loss of wsseg's model in fp32 and bf16 on one set of weights and inputs,
    and its self-supervised loss on shared targets (see the module's docstring)."""
    import torch
    import torch.nn.functional as F

    from wsseg.models.single_stage import SingleStageSegmenter

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SingleStageSegmenter(NUM_CLASSES).train()
    images, tags = batch_of(crop_px)
    losses, shared_targets = {}, None
    # fp32 channels-last first: its masks give the shared targets of all three passes.
    for label, precision, memory_format in (("fp32_channels_last", "fp32", torch.channels_last),
                                            ("fp32", "fp32", torch.contiguous_format),
                                            ("bf16_channels_last", "bf16", torch.channels_last)):
        model.to(memory_format=memory_format)
        torch.manual_seed(1)  # the same dropout and stochastic-gate draws in every pass
        x = images.contiguous(memory_format=memory_format)
        with torch.no_grad():
            out = wsseg_forward(model, x, precision)
            classification = model.classification_loss(out["cls"], tags).item()
            self_supervised = model.self_supervised_loss(out, tags, x.shape[-2:]).item()
            if shared_targets is None:
                shared_targets = F.interpolate(out["masks"], size=x.shape[-2:], mode="bilinear",
                                               align_corners=True).argmax(1)
            shared = model.self_supervised_loss(out, tags, x.shape[-2:], gating="class",
                                                targets=shared_targets).item()
        losses[label] = {"classification": classification, "self_supervised": self_supervised,
                         "total": classification + self_supervised, "self_supervised_shared_targets": shared}
    return losses


def compare_losses(losses: dict) -> dict:
    """bf16 against fp32 (both channels-last), for the step's loss and on the shared targets."""
    result = {"losses": losses, "rtol": BF16_RTOL, "atol": BF16_ATOL}
    within = []
    for term in ("total", "self_supervised_shared_targets"):
        reference, bf16 = losses["fp32_channels_last"][term], losses["bf16_channels_last"][term]
        difference = abs(bf16 - reference)
        result[term] = {
            "bf16_vs_fp32_channels_last_abs_diff": round(difference, 6),
            "bf16_vs_fp32_channels_last_rel_diff": round(difference / abs(reference), 6) if reference else None,
            "fp32_vs_fp32_channels_last_rel_diff": (round(abs(losses["fp32"][term] - reference) / abs(reference), 6)
                                                    if reference else None)}
        within.append(difference <= BF16_ATOL + BF16_RTOL * abs(reference))
    result["within_bf16_tolerance"] = all(within)
    return result


def run_child(args, *mode: str) -> dict:
    child = subprocess.run(
        [sys.executable, __file__, *mode, "--warmup", str(args.warmup), "--steps", str(args.steps),
         "--threads", str(args.threads), "--crop-px", str(args.crop_px),
         *(["--published", str(args.published)] if args.published else [])],
        capture_output=True, text=True)
    if child.returncode != 0:
        sys.stderr.write(child.stderr)
        child.check_returncode()
    return json.loads(child.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict], gemm: dict) -> dict:
    """One case over its rounds: the fastest step is the headline (other jobs only slow steps
    down), read against `gemm`; the medians are over every timed step of every round."""
    per_round = ("step_s_all", "peak_rss_gib", "rss_before_first_step_gib", "load_avg_1min_before",
                 "load_avg_1min_after", *(f"{k}_median" for k in (*PARTS, "step_s")))
    summary = {k: v for k, v in runs[0].items() if k not in per_round}
    steps = [t for run in runs for t in run["step_s_all"]]
    best = min(steps)
    return summary | {
        # Medians of the parts over the rounds' medians: the parts of single steps are not kept.
        **{f"{k}_median": round(statistics.median(run[f"{k}_median"] for run in runs), 2) for k in PARTS},
        "step_s_median": round(statistics.median(steps), 2),
        "step_s_best": best,
        "step_s_all": steps,
        **achieved(summary["gflop_per_step"] * 1e9, best, gemm, summary["precision"]),
        "peak_rss_gib": max(run["peak_rss_gib"] for run in runs),
        "rss_before_first_step_gib": min(run["rss_before_first_step_gib"] for run in runs),
        # The highest load seen around the case: load only ever inflates its times.
        "load_avg_1min_before": max(run["load_avg_1min_before"] for run in runs),
        "load_avg_1min_after": max(run["load_avg_1min_after"] for run in runs),
        "rounds": [{k: run[k] for k in per_round} for run in runs],
    }


def against_published(summary: dict, published: dict) -> dict:
    """published step s / this case's step s: from the fastest steps, and per round (the two ran
    within minutes of each other there), the median of those."""
    per_round = [round(p["step_s_median"] / w["step_s_median"], 3)
                 for p, w in zip(published["rounds"], summary["rounds"])]
    return {"published_over_wsseg": round(published["step_s_best"] / summary["step_s_best"], 3),
            "published_over_wsseg_per_round": per_round,
            "published_over_wsseg_median_of_rounds": round(statistics.median(per_round), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=CPU_CASES, choices=CPU_CASES)
    parser.add_argument("--published", type=Path, help="a checkout of github.com/visinf/1-stage-wseg: time its "
                        "training step too, interleaved with wsseg's cases")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--crop-px", type=int, default=CROP_PX, help="smaller for smoke runs only")
    parser.add_argument("--gemm-n", type=int, default=GEMM_N, help="matrix side of the GEMM peak")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--run-case", help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--loss-check", action="store_true", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.published is not None:
        args.published = args.published.resolve()
        if not (args.published / "models" / "stage_net.py").is_file():
            parser.error(f"--published {args.published}: no models/stage_net.py, not a 1-stage-wseg checkout")

    if args.run_case:
        print(json.dumps(run_case(args.run_case, args.warmup, args.steps, args.threads, args.crop_px,
                                  args.count_flops, args.published)))
        return
    if args.loss_check:
        print(json.dumps(loss_check(args.threads, args.crop_px)))
        return

    import torch

    load_before = load_avg()
    torch.set_num_threads(args.threads)
    gemm = gemm_rates(args.gemm_n)
    print(f"GEMM {args.gemm_n}², {args.threads} thread(s): fp32 {gemm['fp32']['best_gflop_s']} GFLOP/s, bf16 "
          f"{gemm['bf16']['best_gflop_s']} GFLOP/s", flush=True)

    names = [*args.cases, *([PUBLISHED] if args.published else [])]
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names:
            # FLOPs depend on the shapes alone: counted once, in the first round.
            result = run_child(args, "--run-case", name, *(["--count-flops"] if round_index == 0 else []))
            rounds[name].append(result)
            print(f"round {round_index}: {name:20s} {result['step_s_median']:6.2f} s/step (forward "
                  f"{result['forward_s_median']}, PAMR {result['pamr_s_median']}, loss+backward "
                  f"{result['loss_backward_s_median']}, SGD {result['optimizer_s_median']})  "
                  f"peak {result['peak_rss_gib']} GiB  (load {result['load_avg_1min_before']}→"
                  f"{result['load_avg_1min_after']})", flush=True)
    results = {name: summarise(runs, gemm) for name, runs in rounds.items()}
    if args.published:
        for name in args.cases:
            results[name] |= against_published(results[name], results[PUBLISHED])

    losses = compare_losses(run_child(args, "--loss-check"))
    for r in results.values():
        ratio = f", published/this {r['published_over_wsseg']}×" if "published_over_wsseg" in r else ""
        print(f"{r['case']:20s} best {r['step_s_best']:6.2f} s/step, {r['achieved_gflop_s']} GFLOP/s = "
              f"{r['fraction_of_gemm_peak']:.3f} of the GEMM peak{ratio}")
    fp32, bf16 = losses["losses"]["fp32_channels_last"], losses["losses"]["bf16_channels_last"]
    print(f"first-step loss (channels-last both) fp32 {fp32['total']:.6f} vs bf16 {bf16['total']:.6f}, "
          f"self-supervised on shared targets {fp32['self_supervised_shared_targets']:.6f} vs "
          f"{bf16['self_supervised_shared_targets']:.6f}: within bf16 tolerance: {losses['within_bf16_tolerance']}")

    write_report(
        args.out,
        what="single-stage training step: forward + PAMR + pseudo labels + classification and "
             f"self-supervised loss + backward + SGD, ResNet-38 width 1, {BATCH}×3×{args.crop_px}×{args.crop_px}",
        peak_memory="peak resident set size of a fresh process running only this case "
                    "(ru_maxrss), runtime and model included",
        cases=list(results.values()),
        gemm_peak=gemm,
        bf16_vs_fp32_first_step_loss=losses,
        load_avg_1min_before=load_before, load_avg_1min_after=load_avg(),
    )


if __name__ == "__main__":
    main()
