"""benchmarks/run_all.py (`make bench`) runs every benchmark there is, the machine's limits first."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run_all import BENCHMARKS, HERE  # noqa: E402


def test_every_listed_benchmark_exists():
    missing = [name for name in BENCHMARKS if not (HERE / name).is_file()]
    assert not missing, f"run_all.py lists benchmarks that do not exist: {missing}"


def test_every_benchmark_is_listed_once_and_the_machine_limits_come_first():
    assert sorted(BENCHMARKS) == sorted(path.name for path in HERE.glob("bench_*.py"))
    assert len(set(BENCHMARKS)) == len(BENCHMARKS)
    assert BENCHMARKS[0] == "bench_machine.py"
