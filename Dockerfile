# GPU image for training wsseg: CUDA 12 + cuDNN PyTorch base, the pinned requirements, the package.
#   docker build -t wsseg .
#   docker run --gpus all --rm -v /path/to/vaihingen:/data/vaihingen -v $PWD/runs:/app/runs wsseg \
#       --task all --config configs/vaihingen_task1.yaml --set data.root=/data/vaihingen
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

ENTRYPOINT ["python", "run_training.py"]
CMD ["--task", "all", "--config", "configs/demo.yaml"]
