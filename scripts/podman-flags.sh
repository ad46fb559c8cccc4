#!/usr/bin/env bash
# Print the podman flags this machine's sandbox needs (sourced by build-image.sh; the image test does the same
# in Python): containers may not raise rlimits above the host's hard limits (runc/crun fail with "error setting
# rlimit"), and on a cgroup v1 "hybrid" host crun cannot create containers, so runc runs them.
set -euo pipefail
nofile="$(ulimit -Hn)"; [[ "$nofile" == unlimited ]] && nofile=1048576
nproc="$(ulimit -Hu)"; [[ "$nproc" == unlimited || "$nproc" -gt 4096 ]] && nproc=4096
flags="--ulimit nofile=${nofile}:${nofile} --ulimit nproc=${nproc}:${nproc}"
if [[ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]] && command -v runc >/dev/null; then
    flags="--runtime runc $flags"
fi
echo "$flags"
