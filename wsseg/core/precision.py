"""`precision: auto`: the faster of float32 and a 16-bit autocast, measured for this model on this
machine, never guessed from the hardware's name.

Whether bf16 pays depends on the CPU and on the model at once: on an Intel CPU with AMX a VGG16
encoder-decoder's training step ran 3.7× faster in bf16, the depthwise convolutions of an
EfficientNet-Lite0 U-Net 1.09× (within noise); on an AMD CPU with AVX512-BF16 and no AMX dense
convolutions gained 2.3×. So a stage times a few training steps of its own model, on its own input
size, in each candidate precision, alternating so that machine load hits both alike, and keeps the
16-bit one only if it is clearly faster (`MIN_SPEEDUP`): 16-bit arithmetic costs some accuracy and
must buy something for it.

A decision is made once per machine: the first run that meets a (machine, torch, threads, model,
input shape, train/inference) times it with enough repeats to be stable (the median of
interleaved step pairs, and 16-bit only where every pair agrees) and stores it in the machine's
cache (`$WSSEG_CACHE/precision.json`); every later run on that machine reuses it, so two runs of
one config always compute alike. The run folder's `precision.json` records each decision and
where it came from, and a resumed run keeps the decisions it started with. Under torchrun rank
0 decides and every process takes its decision, so all ranks run alike.

Candidates: CPU → bf16 where the CPU has bf16 instructions (AVX512-BF16 or AMX; elsewhere bf16
is emulated and always slower). CUDA → bf16 on Ampere and later, fp16 with a gradient scaler on
older GPUs. Under autocast the losses, softmax statistics, PAMR and metrics stay float32: the
training code casts logits to float32 before its losses, and PAMR disables autocast.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from wsseg.core.distributed import DistInfo, autocast_dtype, run_on_main
from wsseg.core.hub import cache_dir as machine_cache_dir
from wsseg.core.io import atomic_write_json

log = logging.getLogger(__name__)

CACHE_NAME = "precision.json"
# 16-bit must beat float32 by this factor: a smaller gain is within the timing noise of a shared
# machine and not worth the rounding.
MIN_SPEEDUP = 1.1
# Timed steps per candidate after one warm-up step each (kernel choice, allocator growth): with
# two, one model was timed 1.03× in one run and 1.14× in the next on one machine.
TIMED_STEPS = 5
# The measurement runs on at most this many images of the batch: the speed ratio between
# precisions hardly depends on the batch size, and the measurement should cost seconds.
MEASURE_BATCH = 2


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def fast_candidate(device: torch.device) -> str | None:
    """The 16-bit precision worth timing on `device`, or None where none can be faster."""
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 else "fp16"
    if device.type == "cpu":
        flags = cpu_flags()
        return "bf16" if {"avx512_bf16", "amx_bf16"} & flags else None
    return None


def machine_key(device: torch.device) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = platform.processor() or platform.machine()
        try:
            where = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return f"{device.type}: {where}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def model_key(model: torch.nn.Module, input_shape: tuple[int, ...], channels_last: bool, training: bool) -> str:
    parameters = sum(p.numel() for p in model.parameters())
    layout = ", channels-last" if channels_last else ""
    mode = "train" if training else "inference"
    return f"{type(model).__name__} ({parameters} parameters), input {list(input_shape)}{layout}, {mode}"


def _floating_outputs(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _floating_outputs(item)]
    return []


def _step_function(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                   training: bool) -> Callable[[str], None]:
    """One forward (and backward, when `training`) of `model` on `images` in a given precision.

    The loss is the mean of every floating output: a real loss costs next to nothing beside the
    network, and this one needs no labels."""
    def step(precision: str) -> None:
        dtype = autocast_dtype(precision, device)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
        if training:
            model.zero_grad(set_to_none=True)
            with autocast:
                outputs = [out for out in _floating_outputs(model(images)) if out.requires_grad]
            if outputs:
                sum(out.float().mean() for out in outputs).backward()
        else:
            with torch.no_grad(), autocast:
                model(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return step


def time_precisions(step: Callable[[str], None], candidates: list[str], timed_steps: int = TIMED_STEPS,
                    clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """`timed_steps` step times of each candidate precision, the candidates alternating step by
    step so that a change in machine load hits all of them alike (after one warm-up step each)."""
    for precision in candidates:
        step(precision)
    times: dict[str, list[float]] = {precision: [] for precision in candidates}
    for _ in range(timed_steps):
        for precision in candidates:
            start = clock()
            step(precision)
            times[precision].append(clock() - start)
    return times


def choose(step_s: dict[str, list[float]], min_speedup: float = MIN_SPEEDUP) -> str:
    """fp32 unless a 16-bit candidate is at least `min_speedup` times faster in the median of the
    interleaved step pairs, and faster in every pair: a ratio that the noise of one repeat could
    carry across the bar is no reason to give up float32."""
    fast = [p for p in step_s if p != "fp32"]
    if not fast:
        return "fp32"
    candidate = fast[0]
    ratios = [a / b for a, b in zip(step_s["fp32"], step_s[candidate])]
    return candidate if statistics.median(ratios) >= min_speedup and min(ratios) > 1.0 else "fp32"


def speedup(step_s: dict[str, list[float]], candidate: str) -> float:
    """Median fp32 step time over the candidate's."""
    return statistics.median(step_s["fp32"]) / statistics.median(step_s[candidate])


def _load_cache(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning(f"{path}: unreadable ({exc}); measuring the precision again")
        return {}
    return cache if isinstance(cache, dict) else {}


def resolve_precision(precision: str, model: torch.nn.Module, input_shape: tuple[int, ...],
                      device: torch.device, *, cache_dir: Path | None, channels_last: bool = False,
                      training: bool = True, dist: DistInfo = DistInfo(), what: str = "model") -> str:
    """`precision` itself unless it is "auto"; then the decision for `model` on inputs of
    `input_shape` (N×C×H×W): the one `cache_dir/precision.json` (the run's record) holds, else the
    machine's (`$WSSEG_CACHE/precision.json`), else measured now and stored in both.

    The model is not changed: the measurement runs on a copy, and the random number streams are
    restored afterwards, so a run gives the same weights whether or not it measured."""
    if precision != "auto":
        return precision
    candidate = fast_candidate(device)
    if candidate is None:
        log.info(f"precision auto for {what}: fp32 ({device.type} has no fast 16-bit arithmetic)")
        return "fp32"
    shape = (min(input_shape[0], MEASURE_BATCH), *input_shape[1:])
    key = f"{machine_key(device)} | {model_key(model, shape, channels_last, training)}"
    run_path = cache_dir / CACHE_NAME if cache_dir is not None else None
    machine_path = machine_cache_dir() / CACHE_NAME

    def decide() -> str:
        run_cache = _load_cache(run_path) if run_path is not None else {}
        if run_cache.get(key, {}).get("choice") in ("fp32", candidate):
            return run_cache[key]["choice"]
        machine_cache = _load_cache(machine_path)
        entry = machine_cache.get(key)
        if entry is not None and entry.get("choice") in ("fp32", candidate):
            log.info(f"precision auto for {what}: {entry['choice']}, as decided on this machine before "
                     f"({machine_path}; {candidate} {entry.get('speedup')}× fp32's speed)")
            entry = {**entry, "source": str(machine_path)}
        else:
            entry = _measured_entry(model, shape, device, channels_last, training, candidate, what)
            if entry is None:
                return "fp32"
            # Re-read: another run on the machine may have written its own decisions meanwhile.
            atomic_write_json(machine_path, {**_load_cache(machine_path), key: {**entry, "source": "measured"}})
            entry = {**entry, "source": "measured"}
        if run_path is not None:
            atomic_write_json(run_path, {**run_cache, key: entry})
        return entry["choice"]

    return run_on_main(decide, dist)


def _measured_entry(model, shape, device, channels_last, training, candidate, what) -> dict | None:
    try:
        step_s = _measure(model, shape, device, channels_last, training, ["fp32", candidate])
    except RuntimeError as exc:  # an op without a 16-bit kernel on this device, say
        log.warning(f"precision auto for {what}: fp32 ({candidate} failed to run: {exc})")
        return None
    choice, ratio = choose(step_s), speedup(step_s, candidate)
    log.info(f"precision auto for {what}: {choice} ({candidate} {ratio:.2f}× fp32's speed, median of "
             f"{len(step_s['fp32'])} interleaved steps; {candidate} is kept from {MIN_SPEEDUP}× with every step "
             f"faster), stored for later runs on this machine")
    return {"choice": choice, "step_ms": {p: [round(1e3 * t, 1) for t in s] for p, s in step_s.items()},
            "speedup": round(ratio, 3), "load_average_1min": _load_average()}


def _measure(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device, channels_last: bool,
             training: bool, candidates: list[str]) -> dict[str, float]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # A copy: the measurement's backward steps and BatchNorm statistics stay out of the model.
        probe = copy.deepcopy(model).to(device).train(training)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        probe = probe.to(memory_format=memory_format)
        images = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device, memory_format=memory_format)
        step_s = time_precisions(_step_function(probe, images, device, training), candidates)
        del probe
    return step_s


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
