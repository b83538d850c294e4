#!/usr/bin/env python
"""`make bench`: run every benchmark one after the other (never in parallel: they time the CPU)
and write benchmarks/results/*.json. Each benchmark records its machine, threads and load."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["bench_models.py", "bench_sliding_window.py", "bench_pseudo_labels.py", "bench_single_stage.py",
              "bench_predict_geotiff.py"]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)]).returncode != 0:
            failed.append(name)
    for path in sorted((HERE / "results").glob("*.json")):
        print(f"wrote {path.relative_to(HERE.parent)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
