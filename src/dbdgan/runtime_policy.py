"""The process's CPU policy: OpenMP threads that sleep when idle, and an allocator that keeps freed memory.

Imported first by `dbdgan/__init__.py`, so every entry point (the `dbdgan` command, the DVC stages that call
it, the KFP components, the MLflow pyfunc) runs with it and `make` is not needed for speed (docs/operations.md: CPU
performance notes). Nothing the user set is overridden:

- `OMP_WAIT_POLICY=PASSIVE` goes into the environment (setdefault) before torch loads libgomp, which reads it
  once: spinning idle threads made CPU training 6-10x slower on a busy machine. When torch was imported before
  dbdgan the variable can no longer act, and `describe()` says so.
- glibc's allocator gets the Makefile's `GLIBC_TUNABLES` settings (no mmap for large blocks, no trimming)
  through `mallopt`, the same parameters set in-process: tunables act only at process start, and a re-exec
  cannot reach the components or a pyfunc inside someone else's process. mallopt takes an int, so the trim
  threshold is 2 GiB - 1 instead of the tunable's 64 GiB: a free top of the heap larger than 2 GiB is the only
  case that differs. Skipped when the user set `GLIBC_TUNABLES` or preloads another allocator.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

TUNED_GLIBC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"  # what the Makefile exports
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # malloc.h
_TRIM_THRESHOLD = 2**31 - 1
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")

_omp_source = "user" if "OMP_WAIT_POLICY" in os.environ else "dbdgan"
_omp_too_late = _omp_source == "dbdgan" and "torch" in sys.modules
if not _omp_too_late:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _tune_glibc() -> bool:
    """Keep freed memory (mallopt) unless the user chose the allocator's settings; True when applied."""
    if "GLIBC_TUNABLES" in os.environ or any(name in os.environ.get("LD_PRELOAD", "") for name in _PRELOADED):
        return False
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


_glibc_tuned = _tune_glibc()


def allocator() -> str:
    """Which allocator settings this process runs with, as recorded beside every latency."""
    preload = os.environ.get("LD_PRELOAD", "")
    for name in _PRELOADED:
        if name in preload:
            return name
    if _glibc_tuned:
        return "glibc, tuned by dbdgan (mallopt mmap_max=0, trim_threshold=2 GiB)"
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if tunables == TUNED_GLIBC:
        return "glibc, tuned (GLIBC_TUNABLES mmap_max=0, trim_threshold=64 GiB)"
    return f"glibc (GLIBC_TUNABLES={tunables})" if tunables else "glibc (default)"


def omp_wait_policy() -> str:
    """OMP_WAIT_POLICY as libgomp read it, and who chose it."""
    if _omp_too_late:
        return "unset (torch was imported before dbdgan: libgomp's default, idle threads spin)"
    return f"{os.environ.get('OMP_WAIT_POLICY')} ({_omp_source})"


def describe() -> dict[str, str | int]:
    """Threads, wait policy and allocator: the facts a CPU timing depends on."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "omp_wait_policy": omp_wait_policy(), "allocator": allocator()}
