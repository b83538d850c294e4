"""The online-arm step benchmark (benchmarks/bench_online_step.py) keeps running and reports ratios."""

import json
import sys

import pytest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_online_step import main  # noqa: E402


def test_online_step_benchmark_reports_each_arm_against_task_i(tmp_path):
    out = tmp_path / "online_step.json"
    assert main(["--crop-px", "32", "--batch", "2", "--warmup", "0", "--repeats", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    arms = {case["arm"]: case for case in report["cases"]}
    assert set(arms) == {"task_i", "semi", "task_ii_online"}
    assert arms["task_i"]["ratio_to_task_i"] == 1.0
    for case in arms.values():
        assert len(case["step_s"]) == 2 and case["median_step_s"] > 0
        # The ratio is of the unrounded medians; the report rounds each median to 0.1 ms.
        assert case["ratio_to_task_i"] == pytest.approx(case["median_step_s"] / arms["task_i"]["median_step_s"],
                                                        rel=0.02)
    assert report["crop_px"] == 32 and report["batch"] == 2 and "cpu" in report["machine"]
