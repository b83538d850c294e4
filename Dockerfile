# GPU image for wsseg: CUDA 12 + cuDNN PyTorch base, the pinned requirements, the package. The
# entry point is the `wsseg` command, so the arguments are a subcommand and its options:
#   docker build -t wsseg .
#   docker run --gpus all --rm -v /path/to/vaihingen:/data/vaihingen -v $PWD/runs:/app/runs wsseg \
#       train --task all --config configs/vaihingen_task1.yaml --set data.root=/data/vaihingen
#   docker run --gpus all --rm -v $PWD/runs:/app/runs -v /data/scenes:/data/scenes wsseg \
#       predict --checkpoint runs/vaihingen/task_ii/best.pt /data/scenes/area.tif --out runs/predictions
# Downloaded models are cached in /app/cache ($WSSEG_CACHE): mount it to download each model once.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# pydensecrf2 compiles a C++ extension; OpenCV needs libGL-free headless build only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt pyproject.toml README.md ./
# CUDA 12 wheels of the pinned torch/torchvision first, so the requirements' pins are already met
# and pip does not swap in wheels built for another CUDA major version.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
RUN TORCH_PINS=$(grep -E '^(torch|torchvision)==' requirements.txt) \
    && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" $TORCH_PINS \
    && pip install --no-cache-dir -r requirements.txt

COPY wsseg ./wsseg
COPY configs ./configs
COPY resnet_weights ./resnet_weights
COPY run_training.py ./
RUN pip install --no-cache-dir --no-deps -e .

ENV WSSEG_CACHE=/app/cache
# `wsseg` is the console script of pyproject.toml ([project.scripts]), installed by the line above.
ENTRYPOINT ["wsseg"]
CMD ["train", "--task", "all", "--config", "configs/demo.yaml"]
