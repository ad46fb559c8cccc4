#!/usr/bin/env bash
# Install what `make image` and `make image-test` need on a Debian/Ubuntu machine (root): podman with its
# Docker-compatible API service, buildah, debootstrap (the offline base image) and runc (cgroup v1 hosts).
set -euo pipefail
packages=(podman buildah debootstrap runc uidmap slirp4netns fuse-overlayfs)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if (( ${#missing[@]} )); then
    [[ $(id -u) == 0 ]] || { echo "run as root to apt-get install ${missing[*]}" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
podman --version
