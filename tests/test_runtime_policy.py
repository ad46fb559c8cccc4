"""The library's own CPU policy (dbdgan.runtime_policy): set for every entry point, never over the user's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

POLICY_VARS = ("OMP_WAIT_POLICY", "GLIBC_TUNABLES", "LD_PRELOAD")
# Frees 256 MiB and reports how much of it the process still holds (RSS, MiB): glibc's stock allocator maps
# such a block on its own and unmaps it on free; with the policy it stays in the heap for the next tensor.
PROBE = """
import json, os, sys
{first}
import dbdgan
from dbdgan import runtime_policy
import torch

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

before = rss_mib()
block = torch.ones(64 * 2**20)  # 256 MiB
del block
print(json.dumps({{"env": os.environ.get("OMP_WAIT_POLICY"), "kept_mib": rss_mib() - before,
                   **runtime_policy.describe()}}))
"""


def _probe(env: dict[str, str], first: str = "") -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    out = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_without_settings_the_library_sets_passive_threads_and_keeps_freed_memory():
    found = _probe({})
    assert found["env"] == "PASSIVE" and found["omp_wait_policy"] == "PASSIVE (dbdgan)"
    assert found["allocator"].startswith("glibc, tuned by dbdgan")
    assert found["kept_mib"] > 200  # the freed block stayed in the heap


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_what_the_user_set_is_kept_and_recorded():
    found = _probe({"OMP_WAIT_POLICY": "ACTIVE", "GLIBC_TUNABLES": "glibc.malloc.check=0"})
    assert found["env"] == "ACTIVE" and found["omp_wait_policy"] == "ACTIVE (user)"
    assert found["allocator"] == "glibc (GLIBC_TUNABLES=glibc.malloc.check=0)"
    assert found["kept_mib"] < 50  # stock behaviour: the block went back to the kernel


def test_torch_imported_first_is_reported_not_hidden():
    found = _probe({}, first="import torch")
    assert found["env"] is None and found["omp_wait_policy"].startswith("unset (torch was imported before dbdgan")


def test_the_cli_records_its_policy_beside_the_latency(tmp_path):
    """`dbdgan model-info` run directly, outside make, times with the library's policy and says so."""
    clean = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    out = subprocess.run([sys.executable, "-m", "dbdgan.cli", "model-info", "--preset", "mobile_tiny", "--size", "64",
                          "--json"], env=clean, cwd=tmp_path, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["omp_wait_policy"] == "PASSIVE (dbdgan)" and info["allocator"].startswith("glibc, tuned by dbdgan")
    assert info["torch_threads"] >= 1 and info["latency_ms_b1"] > 0
