# syntax=docker/dockerfile:1
# The one image every dbdgan KFP component runs in (and a handy `dbdgan` CLI). Build it with `make image`
# (podman; picks the base, fetches the torch wheel, tags <version>-g<commit>); by hand:
#
#   mkdir -p build/wheels     # must exist; may hold a torch wheel (pip download torch==2.13.0 --no-deps -d ...)
#   podman build -t REGISTRY/dbdgan:0.1.0-g$(git rev-parse --short=10 HEAD) \
#       --build-arg IMAGE_REF=REGISTRY/dbdgan:0.1.0-g... --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt .
#
# BASE_IMAGE: any Debian/Ubuntu image; python3.11 comes from apt when the base has none (the offline base of
# scripts/make-base-image.sh, or nvidia/cuda:*-ubuntu22.04 with TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# for a GPU image). The `pip_ca` build secret (optional) is the CA bundle pip trusts behind a TLS-inspecting
# proxy; it never enters a layer. Dependencies are pinned by constraints.txt, torch by TORCH_VERSION.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi

# ---------------------------------------------------------------------------------------------------------------
FROM python AS build
ARG TORCH_VERSION=2.13.0
# used when build/wheels holds no torch wheel (make image puts the machine's own one there when pip has it)
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

# torch first, in its own layer: by far the largest and the one that changes least often.
COPY build/wheels/ /wheels/
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    wheel="$(ls /wheels/torch-"${TORCH_VERSION}"[+-]*.whl 2>/dev/null | head -n 1)"; \
    if [ -n "${wheel}" ]; then pip install "${wheel}"; \
    else pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; fi \
    && rm -rf /wheels

# Then the other dependencies (from pyproject.toml, pinned): a source change reuses this layer. EXTRAS: the
# optional-dependency groups the components need (not DVC, not the MLflow server).
ARG EXTRAS=validate,kfp
COPY constraints.txt pyproject.toml ./
COPY scripts/requirements.py scripts/
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    python scripts/requirements.py "${EXTRAS}" > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt "setuptools>=68" \
    && pip check

# ---------------------------------------------------------------------------------------------------------------
FROM python AS runtime
# Non-root user with a fixed UID (runAsNonRoot can check it). The KFP v2 launcher writes input artifacts
# under /gcs, /minio and /s3: create them for that user, or older KFP backends fail with "permission denied".
ARG UID=10001
RUN useradd --create-home --uid "${UID}" --user-group --shell /usr/sbin/nologin dbdgan \
    && mkdir -p /gcs /minio /s3 /home/dbdgan/work \
    && chown -R dbdgan:dbdgan /gcs /minio /s3 /home/dbdgan

COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The project itself: a small layer on top of the dependencies.
COPY pyproject.toml README.md constraints.txt /opt/dbdgan/
COPY src /opt/dbdgan/src
COPY components /opt/dbdgan/components
COPY pipelines /opt/dbdgan/pipelines
RUN PIP_NO_CACHE_DIR=1 pip install --no-deps --no-build-isolation --disable-pip-version-check /opt/dbdgan \
    && rm -rf /opt/dbdgan/build /opt/dbdgan/src/*.egg-info \
    && python -c "import dbdgan.steps, dbdgan_kfp.components.ops, dbdgan_kfp.pipelines.pipeline, torch; print('torch', torch.__version__)"
COPY --chown=dbdgan:dbdgan params.yaml /home/dbdgan/work/params.yaml

# KFP runs `python3 -m kfp.dsl.executor_main`: the venv comes first on PATH so that python3 is this one.
# Everything a step writes goes to its artifact paths or under /tmp, so the root filesystem can be read-only;
# the scratch dirs to mount writable (emptyDir / tmpfs) are declared in the label below.
# GLIBC_TUNABLES keeps freed memory instead of re-faulting it on every large tensor (see DESIGN.md).
ENV HOME=/home/dbdgan \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
LABEL io.dbdgan.scratch="/tmp /gcs /minio /s3"

# Last, so that a new tag changes nothing above: the image knows its own name (`dbdgan pipeline compile` run
# inside it names this image) and the commit it was built from (REVISION; DIRTY=1: with uncommitted changes),
# which dbdgan.lineage reads, since a pod has no .git: `dbdgan --version`, registered versions and model cards
# name them. The OCI labels trace it to the code too.
ARG IMAGE_REF=""
ARG VERSION=""
ARG REVISION=""
ARG DIRTY=""
ENV DBDGAN_IMAGE=${IMAGE_REF} DBDGAN_GIT_COMMIT=${REVISION} DBDGAN_GIT_DIRTY=${DIRTY}
LABEL org.opencontainers.image.title="dbdgan" org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" org.opencontainers.image.licenses="Apache-2.0"

USER ${UID}:${UID}
WORKDIR /home/dbdgan/work
CMD ["dbdgan", "--help"]
