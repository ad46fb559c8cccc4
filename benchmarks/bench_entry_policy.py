"""Is `dbdgan` as fast outside `make` as under it? The distill_student stage timed in both environments.

Under make: GLIBC_TUNABLES and OMP_WAIT_POLICY=PASSIVE as the Makefile exports them. Outside make: neither
set, as `dvc repro`, `dvc exp run` or a `dbdgan` command typed in a shell runs; the library's own policy
(dbdgan.runtime_policy) has to give the same speed. `--old-rev REV` adds the same command with the code of
REV (a git worktree on PYTHONPATH), outside make: the slow path before the library set its policy.

Each row runs `dbdgan distill-student --set distill_student.epochs=N` as a fresh process (wall time, startup and
model loading included) on a prepared synthetic set and a one-epoch teacher made first, in a temporary folder;
the load average (`uptime`) is recorded beside each row, since the machine is shared.

Usage: python benchmarks/bench_entry_policy.py [--epochs 2] [--repeats 2] [--old-rev REV --old-epochs 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, TUNED_GLIBC, add_common_args, finish, machine_info, markdown_table

CLI = [sys.executable, "-m", "dbdgan.cli"]
POLICY_VARS = ("GLIBC_TUNABLES", "OMP_WAIT_POLICY")


def _env(under_make: bool, pythonpath: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS and k != "PYTHONPATH"}
    if under_make:
        env.update(GLIBC_TUNABLES=TUNED_GLIBC, OMP_WAIT_POLICY="PASSIVE")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([*CLI, *args], env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _uptime() -> str:
    """`uptime`'s time and load averages (1, 5, 15 min)."""
    text = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return f"{text.split()[0]}, load {text.rpartition('load average:')[2].strip()}"


def _distill(work: Path, name: str, epochs: int, env: dict[str, str], params: Path = ROOT / "params.yaml",
             tag: str | None = None) -> dict[str, Any]:
    load_before = _uptime()
    tag = tag or name
    seconds = _run(["distill-student", "--params", str(params), "--data", "data/prepared",
                    "--teacher", "models/teacher.pt", "--checkpoints", f"checkpoints/{tag}",
                    "--tracking-uri", f"sqlite:///{work}/mlflow.db", "--experiment", "bench-entry-policy",
                    "--out", f"models/{tag}.pt", "--set", f"distill_student.epochs={epochs}"], env, work)
    return {"row": name, "epochs": epochs, "seconds": seconds, "seconds_per_epoch": seconds / epochs,
            "uptime_before": load_before, "uptime_after": _uptime(),
            **{k: env.get(k) for k in POLICY_VARS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, "entry-policy", timing=False)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="under/outside pairs, alternating (default 2)")
    parser.add_argument("--old-rev", help="also time this revision's code outside make (e.g. the one before)")
    parser.add_argument("--old-epochs", type=int, default=1, help="epochs of the --old-rev row (slow: keep it short)")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine_info(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-entry-") as tmp:
        work = Path(tmp)
        make_env = _env(under_make=True)
        _run(["prepare", "--params", str(ROOT / "params.yaml"), "--out", "data/prepared"], make_env, work)
        _run(["train-teacher", "--params", str(ROOT / "params.yaml"), "--data", "data/prepared",
              "--checkpoints", "checkpoints/teacher", "--tracking-uri", f"sqlite:///{work}/mlflow.db",
              "--experiment", "bench-entry-policy", "--out", "models/teacher.pt",
              "--set", "train_teacher.epochs=1"], make_env, work)
        rows = report["rows"]
        for repeat in range(args.repeats):  # alternating, so that a change in the load hits both alike
            for name, env in (("under_make", make_env), ("outside_make", _env(under_make=False))):
                # its own checkpoints and output per run: a rerun would resume instead of training
                rows.append({**_distill(work, name, args.epochs, env, tag=f"{name}_{repeat + 1}"),
                             "repeat": repeat + 1})
        if args.old_rev:
            old = work / "old"
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), args.old_rev], cwd=ROOT, check=True)
            try:
                rows.append({**_distill(work, "outside_make_old_code", args.old_epochs,
                                        _env(under_make=False, pythonpath=old / "src"), old / "params.yaml"),
                             "rev": args.old_rev})
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=True)

    def median(name: str) -> float:
        return statistics.median(r["seconds_per_epoch"] for r in rows if r["row"] == name)

    base = median("under_make")
    for row in rows:
        row["ratio_to_under_make"] = row["seconds_per_epoch"] / base
    report["ratio_outside_over_under_make"] = median("outside_make") / base
    table = markdown_table([("row", "run", ""), ("repeat", "#", ""), ("epochs", "epochs", "d"),
                            ("seconds_per_epoch", "s / epoch", ".1f"),
                            ("ratio_to_under_make", "vs under make", ".2f"), ("uptime_before", "uptime before", ""),
                            ("uptime_after", "uptime after", "")], rows)
    note = ("`dbdgan distill-student` (params.yaml, synthetic data, one-epoch teacher), each row a fresh process; "
            "s / epoch includes startup and model loading. under make: GLIBC_TUNABLES and OMP_WAIT_POLICY=PASSIVE "
            "as the Makefile exports them; outside make: neither set (the library's own policy, "
            "dbdgan.runtime_policy). The machine was shared with other work: see the load beside each row.")
    ratio = (f"Outside make / under make (median s / epoch): {report['ratio_outside_over_under_make']:.2f}"
             + (f"; old code outside make / under make: {rows[-1]['ratio_to_under_make']:.2f}" if args.old_rev else ""))
    finish("entry-policy", report, [note, table, ratio], args.out_dir, timing=True)


if __name__ == "__main__":
    main()
