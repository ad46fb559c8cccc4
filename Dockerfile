# syntax=docker/dockerfile:1
# The one image every dbdgan KFP component runs in (and a handy `dbdgan` CLI).
#
# CPU (default):
#   docker build -t REGISTRY/dbdgan:TAG .
# CUDA (torch's CUDA wheels on a CUDA runtime base; the node needs only the NVIDIA driver):
#   docker build -t REGISTRY/dbdgan:TAG-cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# Dependencies are pinned by constraints.txt (torch, which it leaves out, by TORCH_VERSION).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# python:3.11 images have python3.11; Ubuntu 22.04 (the CUDA bases) gets it from apt.
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
# torch first, in its own layer: it is by far the largest and changes least often.
RUN pip install --upgrade pip \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY constraints.txt ./
COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
RUN pip install -c constraints.txt . \
    && python -c "import dbdgan.steps, dbdgan_kfp.components.ops, dbdgan_kfp.pipelines.pipeline, torch; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3.11 ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# Non-root user with a fixed UID (runAsNonRoot can check it). The KFP v2 launcher writes input artifacts
# under /gcs, /minio and /s3: create them for that user, or older KFP backends fail with "permission denied".
ARG UID=10001
RUN useradd --create-home --uid "${UID}" --user-group --shell /usr/sbin/nologin dbdgan \
    && mkdir -p /gcs /minio /s3 /home/dbdgan/work \
    && chown -R dbdgan:dbdgan /gcs /minio /s3 /home/dbdgan

COPY --from=build /opt/venv /opt/venv
COPY --chown=dbdgan:dbdgan params.yaml /home/dbdgan/work/params.yaml

# KFP runs `python3 -m kfp.dsl.executor_main`: the venv comes first on PATH so that python3 is this one.
# GLIBC_TUNABLES keeps freed memory instead of re-faulting it on every large tensor (see DESIGN.md).
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/dbdgan \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736

USER ${UID}:${UID}
WORKDIR /home/dbdgan/work
CMD ["dbdgan", "--help"]
