"""The report the training-step benchmarks (bench_models.py, bench_single_stage.py) write.

Both write the same JSON layout, what was measured, how peak memory was taken, the machine and
the cases, so that results from different benchmarks and machines can be read side by side.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine_info() -> dict:
    # Imported here, not at the top: the parent process only launches the cases (each in its
    # own process) and need not load torch until it writes the report.
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                if line.startswith("model name")), "unknown")
    # bf16 convs are fast with AMX (Intel) or AVX512-BF16 (AMD Zen 4): record which is there.
    return {"cpu": cpu, "cores": os.cpu_count(), "amx_bf16": "amx_bf16" in cpuinfo,
            "avx512_bf16": "avx512_bf16" in cpuinfo, "torch": torch.__version__,
            "python": platform.python_version()}


def write_report(out: Path, what: str, peak_memory: str, cases: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"what": what, "peak_memory": peak_memory, "machine": machine_info(), "cases": cases}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
