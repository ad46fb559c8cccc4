#!/usr/bin/env bash
# `make image`: build the project image with podman and tag it `dbdgan pipeline image-tag` (version + commit).
# The base is $BASE_IMAGE, else the public python:3.11-slim-bookworm if it can be pulled, else an offline Debian
# base made by scripts/make-base-image.sh. torch comes from a local wheel when pip has one (build/wheels/),
# else from the PyTorch CPU index. Writes build/image.txt (the tag) and build/image-build.json (timings, size).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
EXTRAS="${EXTRAS:-validate,kfp}"
PUBLIC_BASE="${PUBLIC_BASE:-docker.io/library/python:3.11-slim-bookworm}"
OFFLINE_BASE="${OFFLINE_BASE:-localhost/dbdgan-base:bookworm}"
PIP_CA="${PIP_CA:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
read -r -a flags <<<"$(scripts/podman-flags.sh)"
start=$(date +%s)

tag="${IMAGE:-$("$PYTHON" -m dbdgan_kfp.pipelines.cli image-tag)}"
[[ "$tag" == *:latest || "$tag" != *:* ]] && { echo "refusing to build $tag: tags name a version, never latest" >&2; exit 2; }

base="${BASE_IMAGE:-}"
if [[ -z "$base" ]]; then
    if podman image exists "$PUBLIC_BASE" || timeout 120 podman pull -q "$PUBLIC_BASE" >/dev/null 2>&1; then
        base="$PUBLIC_BASE"
    else
        echo "cannot pull $PUBLIC_BASE: using the offline base $OFFLINE_BASE (scripts/make-base-image.sh)"
        scripts/make-base-image.sh "$OFFLINE_BASE"
        base="$OFFLINE_BASE"
    fi
fi

# torch: a wheel pip finds without an index (find-links, e.g. the machine's own CPU build) goes into the build
# context; without one the build installs it from TORCH_INDEX_URL (the PyTorch CPU index by default).
mkdir -p build/wheels
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
torch_from="$TORCH_INDEX_URL"
if compgen -G "build/wheels/torch-${TORCH_VERSION}[+-]*.whl" >/dev/null \
        || "$PYTHON" -m pip download --quiet --no-index --no-deps -d build/wheels "torch==${TORCH_VERSION}" 2>/dev/null; then
    torch_from="build/wheels"
fi

secret=()
[[ -s "$PIP_CA" ]] && secret=(--secret "id=pip_ca,src=$PIP_CA")
version="$("$PYTHON" -c 'from importlib.metadata import version; print(version("dbdgan"))')"
# the commit and dirty flag the image reports (dbdgan.lineage), by the rule of the tag's -dirty suffix
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
dirty=0
[[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] && dirty=1
echo "building $tag on $base (torch ${TORCH_VERSION} from ${torch_from}, extras ${EXTRAS})"
podman build "${flags[@]}" "${secret[@]}" -t "$tag" -f Dockerfile \
    --build-arg BASE_IMAGE="$base" --build-arg TORCH_VERSION="$TORCH_VERSION" \
    --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" --build-arg EXTRAS="$EXTRAS" \
    --build-arg IMAGE_REF="$tag" --build-arg VERSION="$version" \
    --build-arg REVISION="$commit" --build-arg DIRTY="$dirty" .

seconds=$(( $(date +%s) - start ))
size=$(podman image inspect --format '{{.Size}}' "$tag")
printf '%s\n' "$tag" > build/image.txt
printf '{"image": "%s", "base": "%s", "extras": "%s", "seconds": %d, "size_bytes": %s, "loadavg": "%s"}\n' \
    "$tag" "$base" "$EXTRAS" "$seconds" "$size" "$(cut -d' ' -f1-3 /proc/loadavg)" > build/image-build.json
echo "built $tag in ${seconds}s: $(( size / 1000000 )) MB"
