"""Throughput of whole-tile sliding-window inference (the evaluation path: whole tiles, overlapping windows).

Times `wsseg.core.evaluate.sliding_window_logits` on one synthetic Vaihingen-sized tile
(2000×2500, window 256, stride 192 by default) and writes benchmarks/results/sliding_window.json.
Pixel content does not change the cost of a conv net, so a random tile stands in for real data.

    python benchmarks/bench_sliding_window.py [--model encdec_unpool] [--precision auto] [--threads 2]

`--precision` as the config's: auto takes the faster of fp32 and the CPU's bf16, timed by
`wsseg.core.precision` on a few window batches first, as evaluation does.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info  # noqa: E402
from wsseg.core.distributed import autocast_dtype  # noqa: E402
from wsseg.core.evaluate import sliding_window_logits, window_starts  # noqa: E402
from wsseg.core.io import atomic_write_json  # noqa: E402
from wsseg.core.precision import resolve_precision  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "sliding_window.json"


def small_conv_net(num_classes: int) -> nn.Module:
    """Stand-in when the registry has no segmenter of the requested name."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=2, dilation=2), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, num_classes, 1),
    )


def build_model(name: str, num_classes: int) -> tuple[nn.Module, str]:
    try:
        from wsseg.models import build_segmenter
        # pretrained weights do not change the speed, and this machine has no internet
        try:
            return build_segmenter(name, num_classes, pretrained=False), f"wsseg.models.build_segmenter({name!r})"
        except TypeError:
            return build_segmenter(name, num_classes), f"wsseg.models.build_segmenter({name!r})"
    except (ImportError, ValueError) as err:
        return small_conv_net(num_classes), f"fallback small conv net (3 convs): {name!r} unavailable ({err})"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="encdec_unpool")
    parser.add_argument("--num-classes", type=int, default=6)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--width", type=int, default=2500)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--stride", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, model_note = build_model(args.model, args.num_classes)
    model.eval()
    precision = resolve_precision(args.precision, model, (args.batch_size, 3, args.window, args.window),
                                  torch.device("cpu"), cache_dir=None, training=False, what="sliding window")
    amp_dtype = autocast_dtype(precision, torch.device("cpu"))
    image = torch.rand(3, args.height, args.width)
    num_windows = len(window_starts(args.height, args.window, args.stride)) * len(
        window_starts(args.width, args.window, args.stride))

    # Warm-up on one window batch: first calls pay for allocator growth and kernel selection.
    sliding_window_logits(model, image[:, : args.window, : args.window * args.batch_size], args.num_classes,
                          args.window, args.window, args.batch_size, "cpu", amp_dtype)
    load_before = os.getloadavg()
    start = time.perf_counter()
    logits = sliding_window_logits(model, image, args.num_classes, args.window, args.stride, args.batch_size,
                                   "cpu", amp_dtype)
    seconds = time.perf_counter() - start
    assert logits.shape == (args.num_classes, args.height, args.width) and torch.isfinite(logits).all()

    mpix = args.height * args.width / 1e6
    result = {
        "benchmark": "sliding_window_logits",
        "model": args.model,
        "model_source": model_note,
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "tile_hw": [args.height, args.width],
        "window_px": args.window,
        "stride_px": args.stride,
        "batch_size": args.batch_size,
        "num_windows": num_windows,
        "seconds": round(seconds, 3),
        "mpix_per_s": round(mpix / seconds, 5),
        "windows_per_s": round(num_windows / seconds, 4),
        # the evaluated megapixels per second count each tile pixel once, however many windows overlap it
        "dtype": "bfloat16 autocast" if amp_dtype else "float32",
        "precision_setting": args.precision,
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # other jobs on the machine slow the run down; the load average says how busy it was
        "load_average_1_5_15_before": [round(v, 2) for v in load_before],
        "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "machine": machine_info(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(args.out, result)
    print(f"{result['model_source']}: {mpix:.2f} Mpix in {seconds:.1f} s = {result['mpix_per_s']:.4f} Mpix/s "
          f"({num_windows} windows, {result['threads']} threads, {result['dtype']}) → {args.out}")
    return result


if __name__ == "__main__":
    main()
