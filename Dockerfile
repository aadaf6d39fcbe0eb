# syntax=docker/dockerfile:1
# medimg images, one Dockerfile, three targets:
#   docker build --target gateway    -t medimg-gateway .     FastAPI gateway, no ONNX Runtime in it
#   docker build --target worker-cpu -t medimg-worker-cpu .  Celery worker, onnxruntime (CPU)
#   docker build --target worker-gpu -t medimg-worker-gpu .  Celery worker, onnxruntime-gpu on CUDA + cuDNN
#
# GPU pairing (ONNX Runtime docs, "CUDA Execution Provider" > Requirements): from 1.19 the onnxruntime-gpu
# wheels on PyPI are built with CUDA 12.x and cuDNN 9.x; CUDA 12 builds run on any CUDA 12.x (minor version
# compatibility), and cuDNN 8 and 9 builds are not interchangeable. So the pinned onnxruntime-gpu 1.22.0
# runs on the CUDA 12.8 + cuDNN 9 runtime base below. Host: NVIDIA driver >= 570 (CUDA 12.8) and the NVIDIA
# Container Toolkit. Change ORT_GPU_VERSION and CUDA_IMAGE together, never one alone.
#
# The reference models are baked in at /opt/medimg/models (read-only, owned by root); mount a model
# repository over it, read-only, to serve others.
#
# Build arguments, the only knobs (deploy/podman/container-test.sh builds with them and nothing else):
#   PYTHON_IMAGE  any Debian-based image with python3 and python3-venv: the official python image, or one
#                 made without a registry (`debootstrap ... bookworm` + `podman import`, deploy/podman/base-image.sh)
#   PIP_NO_INDEX=1  air-gapped builds: pip installs only from deploy/wheelhouse/, which `make wheelhouse` fills
#                 beforehand with wheels resolved by the image's own Python (deploy/podman/wheelhouse.sh); pip
#                 reads PIP_* build arguments as its options, and looks there (PIP_FIND_LINKS) in every mode.
# The medimg wheel is COPY'd between stages, not bind-mounted: podman's layer cache does not see a change in
# a mounted stage's files, and would keep installing an old wheel.

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# --- the medimg wheel (pure Python), built once and installed by every target ---
FROM ${PYTHON_IMAGE} AS wheel
ARG PIP_NO_INDEX=0 PIP_FIND_LINKS=/wheelhouse
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
RUN --mount=type=bind,source=deploy/wheelhouse,target=/wheelhouse \
    python3 -m venv /opt/build && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- what all Debian-based targets share: a non-root user, a venv, the models ---
FROM ${PYTHON_IMAGE} AS runtime-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    MEDIMG_ENVIRONMENT=production \
    MEDIMG_DATA_DIR=/data \
    MEDIMG_MODEL_REPOSITORY=/opt/medimg/models
RUN groupadd --system --gid 10001 medimg \
    && useradd --system --uid 10001 --gid medimg --no-create-home --shell /usr/sbin/nologin medimg \
    && python3 -m venv /opt/venv \
    && install -d -o medimg -g medimg /data
COPY models/ /opt/medimg/models/

# --- gateway: API only; jobs go to the workers through the broker (MEDIMG_BROKER_URL, default MEDIMG_REDIS_URL) ---
FROM runtime-base AS gateway
ARG PIP_NO_INDEX=0 PIP_FIND_LINKS=/wheelhouse
COPY --from=wheel /wheels /wheels
RUN --mount=type=bind,source=deploy/wheelhouse,target=/wheelhouse \
    pip install --no-cache-dir "$(find /wheels -name 'medimg-*.whl')[s3]" && rm -rf /wheels
ENV MEDIMG_HOST=0.0.0.0 MEDIMG_PORT=8000
USER 10001:10001
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MEDIMG_PORT', '8000'), timeout=4)"]
# Exec form: uvicorn is PID 1 and receives SIGTERM itself (graceful shutdown of open requests).
ENTRYPOINT ["medimg"]
CMD ["serve"]

# --- worker-cpu: Celery worker with ONNX Runtime on the CPU ---
FROM runtime-base AS worker-cpu
ARG PIP_NO_INDEX=0 PIP_FIND_LINKS=/wheelhouse
COPY --from=wheel /wheels /wheels
RUN --mount=type=bind,source=deploy/wheelhouse,target=/wheelhouse \
    pip install --no-cache-dir "$(find /wheels -name 'medimg-*.whl')[cpu,s3]" && rm -rf /wheels
ENV MEDIMG_WORKER_HEARTBEAT_FILE=/tmp/medimg/worker.heartbeat \
    MEDIMG_WORKER_METRICS_PORT=9100 \
    MEDIMG_WORKER_METRICS_HOST=0.0.0.0
USER 10001:10001
WORKDIR /data
EXPOSE 9100
# Alive = a warmed worker process touched the heartbeat file lately (a busy worker still beats).
HEALTHCHECK --interval=15s --timeout=10s --start-period=300s --retries=4 \
    CMD ["medimg", "worker-probe", "--max-age", "60"]
# Exec form: the Celery parent is PID 1, so SIGTERM starts its warm shutdown (running jobs finish).
ENTRYPOINT ["medimg"]
CMD ["worker"]

# --- worker-gpu: worker-cpu's layout on the NVIDIA CUDA runtime with cuDNN, onnxruntime-gpu pinned ---
# It differs from worker-cpu only where it must: the base (CUDA, where Python comes from apt), the extra and
# the pinned onnxruntime-gpu, the NVIDIA variables and a longer start period (TensorRT/CUDA warm-up). The
# suite checks that (tests/deploy/test_container_files.py).
FROM ${CUDA_IMAGE} AS worker-gpu
ARG ORT_GPU_VERSION=1.22.0
ARG PIP_NO_INDEX=0 PIP_FIND_LINKS=/wheelhouse
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    MEDIMG_ENVIRONMENT=production \
    MEDIMG_DATA_DIR=/data \
    MEDIMG_MODEL_REPOSITORY=/opt/medimg/models \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Ubuntu 24.04's own Python 3.12; its security updates come with the distribution, so no version pins here.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 medimg \
    && useradd --system --uid 10001 --gid medimg --no-create-home --shell /usr/sbin/nologin medimg \
    && python3 -m venv /opt/venv \
    && install -d -o medimg -g medimg /data
COPY models/ /opt/medimg/models/
COPY --from=wheel /wheels /wheels
RUN --mount=type=bind,source=deploy/wheelhouse,target=/wheelhouse \
    pip install --no-cache-dir "$(find /wheels -name 'medimg-*.whl')[gpu,s3]" "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && rm -rf /wheels
ENV MEDIMG_WORKER_HEARTBEAT_FILE=/tmp/medimg/worker.heartbeat \
    MEDIMG_WORKER_METRICS_PORT=9100 \
    MEDIMG_WORKER_METRICS_HOST=0.0.0.0
USER 10001:10001
WORKDIR /data
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=10s --start-period=600s --retries=4 \
    CMD ["medimg", "worker-probe", "--max-age", "60"]
ENTRYPOINT ["medimg"]
CMD ["worker"]
