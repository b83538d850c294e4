#!/usr/bin/env python
"""`wsseg predict` on GeoTIFFs of growing size: throughput and peak memory.

Each size runs in its own process (peak RSS is a per-process high-water mark) on a synthetic
3-band uint8 GeoTIFF written block by block beforehand, with the demo's segmenter (U-Net on
EfficientNet-Lite0, random weights: the weights do not change the cost). The claim measured is
that memory is flat in raster size: GeoTIFFs are read and written block by block
(`wsseg.pipeline.geotiff`), so the peak RSS of the largest raster must stay within 1.5× of the
smallest's. Writes benchmarks/results/predict_geotiff.json.

    python benchmarks/bench_predict_geotiff.py [--sizes 2500x2000,10000x10000] [--precision auto] [--threads 2]

`--precision` as `wsseg predict --precision`: auto times fp32 against the CPU's bf16 on a few
window batches first and says which it took (`precision` in each case).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_report  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "predict_geotiff.json"
NUM_CLASSES = 6
FLATNESS_LIMIT = 1.5


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """"2500x2000,10000" → [(2500, 2000), (10000, 10000)]: width × height, or one side of a square."""
    sizes = []
    for item in text.split(","):
        width, _, height = item.strip().partition("x")
        sizes.append((int(width), int(height or width)))
    return sizes


def write_raster(path: Path, width: int, height: int, block: int = 1024) -> None:
    """A width × height 3-band uint8 GeoTIFF (UTM 32N, 10 cm pixels), written block by block."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32632", "transform": from_origin(500000.0, 5400000.0, 0.1, 0.1), "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as raster:
        for y in range(0, height, block):
            for x in range(0, width, block):
                h, w = min(block, height - y), min(block, width - x)
                raster.write(rng.integers(0, 256, (3, h, w), dtype=np.uint8), window=Window(x, y, w, h))


def run_case(raster: Path, out_dir: Path, threads: int | None, window: int, stride: int, block: int,
             precision: str) -> dict:
    """In the child process: predict `raster`, report time, throughput and this process's peak RSS."""
    import torch

    from wsseg.models import build_segmenter
    from wsseg.models.normalization import normalisation_of
    from wsseg.pipeline.predict import predict_paths
    from wsseg.pipeline.predict_plan import PredictOptions
    from wsseg.pipeline.release import TrainedModel

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_segmenter("effnet_lite0_unet", NUM_CLASSES, pretrained=False).eval()
    mean, std = normalisation_of(model)
    trained = TrainedModel(model=model, model_name="effnet_lite0_unet", options={"pretrained": False},
                           class_names=tuple(f"class_{c}" for c in range(NUM_CLASSES)),
                           palette=tuple((40 * c, 255 - 40 * c, 128) for c in range(NUM_CLASSES)), ignore_index=255,
                           mean=mean, std=std, bands=("red", "green", "blue"), config={}, source="random weights")
    opts = PredictOptions(window_px=window, stride_px=stride, batch_size=4, block_px=block, progress=False,
                          precision=precision)
    chosen = []
    handler = logging.Handler()
    handler.emit = lambda record: chosen.append(record.getMessage())
    logging.getLogger("wsseg.core.precision").addHandler(handler)
    logging.getLogger("wsseg.core.precision").setLevel(logging.INFO)
    load_before = os.getloadavg()
    start = time.perf_counter()
    predict_paths(trained, [raster], out_dir, opts)
    seconds = time.perf_counter() - start
    import rasterio

    with rasterio.open(raster) as src:
        pixels = src.width * src.height
    return {"pixels": pixels, "seconds": round(seconds, 2), "mpix_per_s": round(pixels / seconds / 1e6, 4),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "precision": precision, "precision_decision": chosen[0] if chosen else None,
            "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in os.getloadavg()],
            "torch_threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2500x2000,10000x10000",
                        help="rasters as WIDTHxHEIGHT (or one side of a square) in px, smallest first")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--stride", type=int, default=192)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--case", type=Path, help=argparse.SUPPRESS)  # internal: one raster, in a child
    args = parser.parse_args(argv)
    if args.case is not None:
        with tempfile.TemporaryDirectory() as out_dir:
            print(json.dumps(run_case(args.case, Path(out_dir), args.threads, args.window, args.stride, args.block,
                                      args.precision)))
        return 0

    cases = []
    with tempfile.TemporaryDirectory() as work:
        for width, height in parse_sizes(args.sizes):
            raster = Path(work) / f"scene_{width}x{height}.tif"
            write_raster(raster, width, height)
            command = [sys.executable, __file__, "--case", str(raster), "--window", str(args.window),
                       "--stride", str(args.stride), "--block", str(args.block), "--precision", args.precision]
            if args.threads:
                command += ["--threads", str(args.threads)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                print(result.stderr, file=sys.stderr)
                return 1
            case = {"raster_px": [width, height], **json.loads(result.stdout.strip().splitlines()[-1])}
            print(json.dumps(case))
            cases.append(case)
            raster.unlink()
    ratio = cases[-1]["peak_rss_mib"] / cases[0]["peak_rss_mib"]
    summary = {"peak_rss_ratio_largest_to_smallest": round(ratio, 3), "limit": FLATNESS_LIMIT,
               "memory_flat": ratio <= FLATNESS_LIMIT, "window_px": args.window, "stride_px": args.stride,
               "block_px": args.block, "model": "effnet_lite0_unet (random weights)"}
    write_report(args.out, "wsseg predict on synthetic 3-band uint8 GeoTIFFs, block by block",
                 "ru_maxrss of each case's own process", [*cases, summary])
    largest, smallest = ("×".join(map(str, c["raster_px"])) for c in (cases[-1], cases[0]))
    print(f"peak RSS {cases[-1]['peak_rss_mib']} MiB at {largest} vs {cases[0]['peak_rss_mib']} MiB at {smallest}: "
          f"ratio {ratio:.2f} (limit {FLATNESS_LIMIT})")
    return 0 if ratio <= FLATNESS_LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
