#!/usr/bin/env bash
# Build an offline Debian bookworm base image (minbase) with debootstrap and import it into podman.
# For machines and air-gapped clusters that cannot pull the public base: only a Debian mirror is needed.
# Usage: scripts/make-base-image.sh [IMAGE]   (default localhost/dbdgan-base:bookworm; kept if it exists)
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), SUITE (default bookworm), FORCE=1 rebuilds.
set -euo pipefail
image="${1:-localhost/dbdgan-base:bookworm}"
suite="${SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ "${FORCE:-0}" != 1 ]] && podman image exists "$image"; then
    echo "base image $image exists (FORCE=1 rebuilds it)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "debootstrap needs root" >&2; exit 1; }

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/dbdgan-rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror"
# Same trimming as the official debian:*-slim images: no apt lists or caches in the layer.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar --numeric-owner -C "$rootfs" -c . \
    | podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$image"
echo "built base image $image"
