"""Cost of the pseudo-label steps of the single-stage segmenter (Araslanov & Roth, CVPR 2020): PAMR and dense CRF.

PAMR, the default dilations (1, 2, 4, 8, 12, 24) and 10 iterations, on three cases: masks
1×21×81×81 and 2×21×81×81 (a 321² crop at stride 4, VOC's 21 channels, batch 1 and 2) and one
whole 1×12×360×480 frame, each with a 3-channel image of the same size. CRF: one 512×512 crop,
6 classes, 10 mean-field steps. Random inputs: neither cost depends on the pixel values.
Writes benchmarks/results/pseudo_labels.json.

With `--published DIR` (a checkout of github.com/visinf/1-stage-wseg, read at run time and
never copied into this repository) the published `models/mods/pamr.py` module,
`PAMR(num_iter, dilations)(image, masks)`, is timed on the same inputs, its calls alternating
with wsseg's so that both run under the same machine load; each case then records
both timings, the ratio published/wsseg and the largest absolute difference of the outputs.
The two define PAMR alike (outputs differ by float32 rounding, ~2e-6); the published module pads
once per dilation where wsseg pads once by the largest (the same values, replicate padding being
a clamp), gathers neighbours with one-hot 3×3 convolutions, and resizes the masks to the image
first (a no-op here, the sizes being equal). The published module takes seconds on the whole
frame, so that case is repeated fewer times (a quarter of --repeats, at least 2).

Alternating the calls spreads the load over both, not its effect: wsseg's PAMR runs many short
operations, and with as many threads as cores on a machine loaded beyond its cores each one may
wait for a descheduled thread, so there it loses far more than the published module's few long
ones. Read the ratios of runs whose load average stayed below the core count, or use --threads 1.

    python benchmarks/bench_pseudo_labels.py [--repeats 10] [--threads 2] [--published DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import platform
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info  # noqa: E402
from wsseg.core.io import atomic_write_json  # noqa: E402
from wsseg.pseudo_labels.crf import dense_crf  # noqa: E402
from wsseg.pseudo_labels.pamr import DEFAULT_DILATIONS, pamr  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "pseudo_labels.json"


def time_calls(fn, repeats: int) -> dict:
    """Median and fastest of `repeats` calls after one warm-up (allocator growth, kernel choice)."""
    return time_interleaved({"only": fn}, repeats)["only"]


def time_interleaved(fns: dict, repeats: int) -> dict:
    """`time_calls` for several functions at once, their calls alternating (the order reversed
    every other round), so that a change in machine load during the run reaches all of them."""
    for fn in fns.values():
        fn()
    seconds = {name: [] for name in fns}
    for round_index in range(repeats):
        names = list(fns) if round_index % 2 == 0 else list(reversed(fns))
        for name in names:
            start = time.perf_counter()
            fns[name]()
            seconds[name].append(time.perf_counter() - start)
    # On a shared machine the fastest call is the best estimate of the cost itself.
    return {name: {"median_ms": round(1e3 * statistics.median(s), 2), "min_ms": round(1e3 * min(s), 2),
                   "repeats": repeats} for name, s in seconds.items()}


def load_published_pamr(checkout: Path):
    """The PAMR class of a 1-stage-wseg checkout and the sha256 of its file, loaded from that
    file alone: importing the `models` package would build the whole network module (and its
    dependencies) first."""
    path = checkout / "models" / "mods" / "pamr.py"
    if not path.is_file():
        raise SystemExit(f"--published {checkout}: no models/mods/pamr.py there")
    spec = importlib.util.spec_from_file_location("published_1stage_wseg_pamr", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PAMR, hashlib.sha256(path.read_bytes()).hexdigest()


def bench_pamr(batch: int, num_classes: int, height: int, width: int, num_iter: int, repeats: int,
               published_pamr=None) -> dict:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, height, width, generator=gen)
    masks = torch.softmax(2 * torch.randn(batch, num_classes, height, width, generator=gen), dim=1)
    fns = {"wsseg": lambda: pamr(image, masks, DEFAULT_DILATIONS, num_iter)}
    if published_pamr is not None:
        published = published_pamr(num_iter, list(DEFAULT_DILATIONS))
        fns["published"] = lambda: published(image, masks)
    with torch.no_grad():
        timings = time_interleaved(fns, repeats)
        case = {"masks_shape": list(masks.shape), "image_shape": list(image.shape),
                "dilations": list(DEFAULT_DILATIONS), "num_iter": num_iter, **timings}
        if published_pamr is not None:
            difference = (fns["published"]() - fns["wsseg"]()).abs().max().item()
            case["published_over_wsseg_median"] = round(
                timings["published"]["median_ms"] / timings["wsseg"]["median_ms"], 2)
            case["published_over_wsseg_min"] = round(
                timings["published"]["min_ms"] / timings["wsseg"]["min_ms"], 2)
            case["max_abs_difference"] = difference
    return case


def bench_crf(num_classes: int, size: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    # Smooth random maps and a blocky image, so the CRF has edges and regions to work on.
    logits = F.interpolate(4 * torch.randn(1, num_classes, size // 32, size // 32, generator=gen),
                           size=(size, size), mode="bilinear", align_corners=True)
    probs = torch.softmax(logits, dim=1)[0].numpy()
    image = F.interpolate(torch.rand(1, 3, size // 16, size // 16, generator=gen), size=(size, size),
                          mode="nearest")[0].permute(1, 2, 0)
    image = (255 * image).to(torch.uint8).numpy()
    timing = time_calls(lambda: dense_crf(image, probs), repeats)
    # one crop per call, so the times are per crop
    return {"crop_hw": [size, size], "num_classes": num_classes, "n_iter": 10, **timing}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--published", type=Path, default=None,
                        help="a checkout of visinf/1-stage-wseg: time its PAMR module alongside")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    published_pamr, published_sha256 = load_published_pamr(args.published) if args.published else (None, None)
    whole_frame_repeats = max(2, args.repeats // 4)

    load_before = os.getloadavg()
    pamr_cases = [
        bench_pamr(1, 21, 81, 81, num_iter=10, repeats=args.repeats, published_pamr=published_pamr),
        bench_pamr(2, 21, 81, 81, num_iter=10, repeats=args.repeats, published_pamr=published_pamr),
        bench_pamr(1, 12, 360, 480, num_iter=10, repeats=whole_frame_repeats, published_pamr=published_pamr),
    ]
    result = {
        "benchmark": "pseudo_labels",
        "pamr": pamr_cases,
        # which published file was timed, by content: the checkout's path means nothing elsewhere
        "pamr_published_sha256": published_sha256,
        "crf": bench_crf(num_classes=6, size=512, repeats=max(1, args.repeats // 2)),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # other jobs on the machine slow the run down; the load average says how busy it was
        "load_average_1_5_15_before": [round(v, 2) for v in load_before],
        "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": machine_info(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(args.out, result)
    for p in pamr_cases:
        line = (f"PAMR {p['masks_shape']} ×{p['num_iter']}: wsseg median {p['wsseg']['median_ms']} ms "
                f"(min {p['wsseg']['min_ms']})")
        if "published" in p:
            line += (f", published median {p['published']['median_ms']} ms (min {p['published']['min_ms']}), "
                     f"published/wsseg {p['published_over_wsseg_median']} (min {p['published_over_wsseg_min']}), "
                     f"max |diff| {p['max_abs_difference']:.2g}")
        print(line)
    c = result["crf"]
    print(f"CRF 512² × 6 classes: median {c['median_ms']} ms/crop (min {c['min_ms']}); "
          f"peak RSS {result['peak_rss_mib']} MiB; torch {result['torch']}, {result['threads']} threads; "
          f"load {result['load_average_1_5_15_before']} → {result['load_average_1_5_15_after']} → {args.out}")
    return result


if __name__ == "__main__":
    main()
