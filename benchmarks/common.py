"""What every benchmark script shares: the allocator switch, machine facts, timing, and result files.

Timings on a CPU depend on the thread count, the memory allocator (benchmarks/README.md: glibc's default allocator
returns large freed tensors to the kernel and re-faults them, which can cost as much as the compute) and
whatever else the machine is running, so every result file records all three beside the numbers.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
SHARED_CUHK = Path(os.environ.get("DBDGAN_SHARED_DATA", ROOT.parent / "shared/data/cuhk-dbd"))

# The same setting the Makefile exports for every pipeline run: keep freed memory instead of unmapping it.
TUNED_GLIBC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
ALLOCATORS = ("tuned", "default", "inherit")


def add_common_args(parser: Any, name: str, timing: bool = True) -> None:
    """--out-dir, and for scripts that time things --allocator, --omp-wait-policy and --threads."""
    parser.add_argument("--out-dir", type=Path, default=RESULTS,
                        help=f"where {name}.json and {name}.md go (default benchmarks/results)")
    if not timing:
        return
    parser.add_argument(
        "--allocator", choices=ALLOCATORS, default="tuned",
        help="tuned: GLIBC_TUNABLES as the Makefile sets it (default); default: glibc's stock allocator; "
             "inherit: the environment as it is (e.g. LD_PRELOAD=libjemalloc.so)",
    )
    parser.add_argument(
        "--omp-wait-policy", choices=("inherit", "passive", "active"), default="inherit",
        help="OMP_WAIT_POLICY for torch's OpenMP threads (default: the environment's). On a machine busier "
             "than its core count, spinning threads (libgomp's default) can slow a forward pass many times",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")


def apply_runtime_env(allocator: str, omp_wait_policy: str = "inherit") -> None:
    """Re-execute this script with the chosen GLIBC_TUNABLES / OMP_WAIT_POLICY: both are read only when the
    process (glibc) or the OpenMP runtime (first torch import) starts, so they cannot be changed in place."""
    env = dict(os.environ)
    if allocator == "tuned":
        env["GLIBC_TUNABLES"] = TUNED_GLIBC
    elif allocator == "default":
        env.pop("GLIBC_TUNABLES", None)
    if omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = omp_wait_policy.upper()
    keys = ("GLIBC_TUNABLES", "OMP_WAIT_POLICY")
    if all(env.get(k) == os.environ.get(k) for k in keys):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def allocator_label() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preload:
            return name
    tunables = os.environ.get("GLIBC_TUNABLES")
    if tunables == TUNED_GLIBC:
        return "glibc, tuned (mmap_max=0, trim_threshold=64 GiB)"
    return f"glibc ({tunables})" if tunables else "glibc (stock)"


def git_state() -> dict[str, Any]:
    """The commit measured and the tracked files that differed from it (params.yaml edits change results)."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None,
            "modified": [line for line in git("diff", "--name-only", "HEAD").splitlines() if line]}


def machine_info() -> dict[str, Any]:
    """Facts that decide how far a timing can be trusted; call at the start, `finish` adds the end load."""
    import torch

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "allocator": {
            "label": allocator_label(),
            "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES"),
            "LD_PRELOAD": os.environ.get("LD_PRELOAD"),
        },
        "load_average_at_start": list(os.getloadavg()),
        "git": git_state(),
    }


def set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


def timed_median(fn: Callable[[], object], warmup: int, runs: int) -> tuple[float, list[float]]:
    """Median seconds of `runs` timed calls after `warmup` untimed ones, and every timed call's seconds."""
    from dbdgan.models.info import timed_runs

    times = timed_runs(fn, warmup, runs)
    return statistics.median(times), times


Column = tuple[str, str, str]  # (row key, header, format spec; "" = str())


def markdown_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table; missing or None cells print as a dash."""

    def cell(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        return format(value, spec) if spec else str(value)

    lines = [
        "| " + " | ".join(header for _, header, _ in columns) + " |",
        "|" + "|".join(" --- " for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(row, key, spec) for key, _, spec in columns) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(machine: dict[str, Any]) -> str:
    start = ", ".join(f"{x:.1f}" for x in machine["load_average_at_start"])
    end = machine.get("load_average_at_end")
    load = f"load average (1/5/15 min) {start} at start" + (
        f", {', '.join(f'{x:.1f}' for x in end)} at end" if end else ""
    )
    return (
        f"{machine['date']}; {machine['cpus']} CPUs, torch {machine['torch']} with "
        f"{machine['torch_threads']} threads (OMP_WAIT_POLICY {machine['OMP_WAIT_POLICY'] or 'unset'}), "
        f"allocator {machine['allocator']['label']}; {load}."
    )


def finish(
    name: str, report: dict[str, Any], sections: Sequence[str], out_dir: Path, timing: bool = True
) -> None:
    """Add the end load average, write <name>.json and <name>.md atomically, print the Markdown."""
    from dbdgan.io_utils import atomic_write_json, atomic_write_text

    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    machine = report["machine"]
    where = f"Machine: {machine_line(machine)}" if timing else f"Written {machine['date']}."
    header = [f"# {name} benchmark", where]
    text = "\n\n".join([*header, *sections]) + "\n"
    atomic_write_json(out_dir / f"{name}.json", report)
    atomic_write_text(out_dir / f"{name}.md", text)
    print(text)
    print(f"wrote {out_dir / f'{name}.json'} and {out_dir / f'{name}.md'}")


def labelled_path(text: str) -> tuple[str, Path]:
    """An argparse type for LABEL=PATH; a relative PATH is taken from the repository root."""
    import argparse

    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    path_obj = Path(path)
    return label, path_obj if path_obj.is_absolute() else ROOT / path_obj


def cuhk_subset(source: Path, target: Path, count: int) -> Path:
    """Symlink the first `count` CUHK pairs (sorted by name): a quick-to-prepare stand-in for the set."""
    (target / "images").mkdir(parents=True)
    (target / "masks").mkdir()
    for image in sorted((source / "images").iterdir())[:count]:
        (target / "images" / image.name).symlink_to(image)
        mask = source / "masks" / f"{image.stem}.png"
        (target / "masks" / mask.name).symlink_to(mask)
    return target
