"""Cost of the pseudo-label steps of the single-stage segmenter (Araslanov & Roth, CVPR 2020): PAMR and dense CRF.

PAMR: masks 1×21×81×81 (a 321² crop at stride 4, VOC's 21 channels), image 1×3×81×81, the
default dilations (1, 2, 4, 8, 12, 24) and 10 iterations. CRF: one 512×512 crop, 6 classes,
10 mean-field steps. Random inputs: neither cost depends on the pixel values. Writes
benchmarks/results/pseudo_labels.json.

    python benchmarks/bench_pseudo_labels.py [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
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

from wsseg.core.io import atomic_write_json  # noqa: E402
from wsseg.pseudo_labels.crf import dense_crf  # noqa: E402
from wsseg.pseudo_labels.pamr import DEFAULT_DILATIONS, pamr  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "pseudo_labels.json"


def time_calls(fn, repeats: int) -> dict:
    """Median and fastest of `repeats` calls after one warm-up (allocator growth, kernel choice)."""
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    # On a shared machine the fastest call is the best estimate of the cost itself.
    return {"median_ms": round(1e3 * statistics.median(seconds), 2), "min_ms": round(1e3 * min(seconds), 2),
            "repeats": repeats}


def bench_pamr(num_classes: int, size: int, num_iter: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=gen)
    masks = torch.softmax(2 * torch.randn(1, num_classes, size, size, generator=gen), dim=1)
    with torch.no_grad():
        timing = time_calls(lambda: pamr(image, masks, DEFAULT_DILATIONS, num_iter), repeats)
    return {"masks_shape": list(masks.shape), "image_shape": list(image.shape),
            "dilations": list(DEFAULT_DILATIONS), "num_iter": num_iter, **timing}


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
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    result = {
        "benchmark": "pseudo_labels",
        "pamr": bench_pamr(num_classes=21, size=81, num_iter=10, repeats=args.repeats),
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
        "machine": platform.machine(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(args.out, result)
    p, c = result["pamr"], result["crf"]
    print(f"PAMR {p['masks_shape']} ×{p['num_iter']}: median {p['median_ms']} ms (min {p['min_ms']}); "
          f"CRF 512² × 6 classes: median {c['median_ms']} ms/crop (min {c['min_ms']}); "
          f"peak RSS {result['peak_rss_mib']} MiB; torch {result['torch']}, {result['threads']} threads "
          f"→ {args.out}")
    return result


if __name__ == "__main__":
    main()
