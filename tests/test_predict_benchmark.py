"""The GeoTIFF predict benchmark (benchmarks/bench_predict_geotiff.py) keeps running."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_predict_geotiff import main  # noqa: E402


def test_predict_benchmark_reports_throughput_and_peak_memory_per_size(tmp_path):
    out = tmp_path / "predict_geotiff.json"
    main(["--sizes", "120x96,200", "--window", "64", "--stride", "48", "--block", "128", "--threads", "1",
          "--precision", "auto", "--out", str(out)])
    report = json.loads(out.read_text())
    small, large, summary = report["cases"]
    assert (small["raster_px"], large["raster_px"]) == ([120, 96], [200, 200])
    assert small["pixels"] == 120 * 96 and large["pixels"] == 200 * 200
    assert small["precision"] == "auto" and small["precision_decision"].startswith("precision auto for prediction: ") and all(c["mpix_per_s"] > 0 and c["peak_rss_mib"] > 0 for c in (small, large))
    assert summary["peak_rss_ratio_largest_to_smallest"] == round(large["peak_rss_mib"] / small["peak_rss_mib"], 3)
    assert "cpu" in report["machine"]
