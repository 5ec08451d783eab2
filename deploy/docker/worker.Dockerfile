# syntax=docker/dockerfile:1
# GPU worker image: `zq worker --model turbo|edit|base`, one process per GPU.
#
#   docker build -f deploy/docker/worker.Dockerfile -t zimage-queue .
#   docker run --gpus all -v zq-models:/models -e ZQ_REDIS_URL=... -e ZQ_STORAGE_URL=... \
#       zimage-queue worker --model edit
#
# The Helm chart runs it as `image.repository` (default zimage-queue).
#
# Weights are not baked in: they download on first start into HF_HUB_CACHE=/models, a volume
# (mount a pre-populated one and set HF_HUB_OFFLINE=1 to start without network).
# SIGTERM is Celery's warm shutdown (the running job finishes, then the worker exits): give the
# container a stop timeout / termination grace period longer than the slowest job.

ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gnupg \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the index whose wheels match the base image's CUDA 12.4.
RUN pip install --index-url ${TORCH_INDEX_URL} "torch>=2.4"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY producer ./producer
COPY worker ./worker
COPY zq ./zq
RUN pip install ".[worker,gpu]" \
 && python -c "import torch, diffusers, zq.cli; print('torch', torch.__version__, torch.version.cuda)"

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# gcc and Python's headers: with ZQ_COMPILE, Triton builds its kernel launchers at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gnupg \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 \
 && apt-get install -y --no-install-recommends gcc libc6-dev python3.11-dev \
 && apt-get purge -y software-properties-common gnupg && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
RUN groupadd --gid 10001 zq \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /home/zq --shell /usr/sbin/nologin zq \
 && mkdir -p /models /home/zq && chown 10001:10001 /models /home/zq
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/zq \
    HF_HOME=/models \
    HF_HUB_CACHE=/models \
    ZQ_DEVICE=cuda \
    ZQ_METRICS_PORT=9400 \
    TRITON_CACHE_DIR=/tmp/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
VOLUME ["/models"]
EXPOSE 9400
USER 10001:10001
WORKDIR /home/zq
STOPSIGNAL SIGTERM
ENTRYPOINT ["zq"]
CMD ["worker", "--model", "turbo"]
