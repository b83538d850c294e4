#!/usr/bin/env python
"""`make bench`: run every benchmark one after the other (never in parallel: they time the CPU)
and write benchmarks/results/*.json. Each benchmark records its machine, threads and load.

    python benchmarks/run_all.py [--published DIR] [--skip-demo]

`--published`: a checkout of github.com/visinf/1-stage-wseg, whose training step and PAMR
bench_single_stage.py and bench_pseudo_labels.py then time beside wsseg's (`make bench PUBLISHED=DIR`).
`--skip-demo`: leave out bench_demo.py, which clones the repository and runs `make install` and
`make demo` (about 12 minutes).
"""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The machine's limits first: every later figure is read against them.
BENCHMARKS = ["bench_machine.py", "bench_models.py", "bench_encoders.py", "bench_sliding_window.py",
              "bench_pseudo_labels.py", "bench_single_stage.py", "bench_predict_geotiff.py", "bench_loader.py",
              "bench_online_step.py", "bench_compile.py", "bench_scaling.py", "bench_demo.py"]
# These also time the published code (visinf/1-stage-wseg) on the same inputs when given a checkout.
TAKE_PUBLISHED = {"bench_single_stage.py", "bench_pseudo_labels.py"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--published", type=Path, help="a checkout of visinf/1-stage-wseg for bench_single_stage.py")
    parser.add_argument("--skip-demo", action="store_true", help="leave out bench_demo.py (about 12 minutes)")
    args = parser.parse_args()
    failed = []
    for name in BENCHMARKS:
        if name == "bench_demo.py" and args.skip_demo:
            continue
        print(f"== {name}", flush=True)
        extra = ["--published", str(args.published)] if name in TAKE_PUBLISHED and args.published else []
        if subprocess.run([sys.executable, str(HERE / name), *extra]).returncode != 0:
            failed.append(name)
    for path in sorted((HERE / "results").glob("*.json")):
        print(f"wrote {path.relative_to(HERE.parent)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
