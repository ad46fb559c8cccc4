"""Pipeline wall time: a cold `dvc repro` of the whole DAG, and a no-op `dvc repro` (nothing changed).

Runs in a temporary copy of the project: dvc.yaml, .dvcignore and params.yaml copied, src/ symlinked, fresh
`git init` + `dvc init`, so the repository's own outputs, DVC cache and MLflow store are untouched. The stages
run the installed `dbdgan` CLI exactly as `make run` does.
  --tiny (default): params.yaml + profiles/tiny.yaml, the tests' tiny config (24 synthetic images at 48 px, one
          epoch each): minutes.
  --full: params.yaml as it is, i.e. the default pipeline's wall time (`python benchmarks/bench_pipeline.py
          --full`; tens of minutes on a busy 2-core machine).
Then `dvc repro` is timed --noop-runs times with nothing changed (median): the cost of asking DVC whether
anything is stale (hashing deps, reading dvc.lock), paid by every `make run`.

Usage: python benchmarks/bench_pipeline.py [--full] [--noop-runs 3] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, add_common_args, apply_runtime_env, finish, machine_info, markdown_table, set_threads

from dbdgan.graph import STEPS

BIN = Path(sys.executable).parent
STAGES = [step.name for step in STEPS]


def tiny_params() -> dict[str, Any]:
    """params.yaml + profiles/tiny.yaml (the tests' tiny config), merged and validated: every stage in seconds."""
    from dbdgan.config import load_params

    return load_params([ROOT / "params.yaml", ROOT / "profiles" / "tiny.yaml"]).model_dump(mode="json")


def run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and combined output of a command; a failure raises with the output's tail."""
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout + proc.stderr


def ran_stages(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def config_line(params: dict[str, Any], git: dict[str, Any]) -> str:
    """What the run trained: the numbers that decide its wall time, and whether params.yaml was committed."""
    synthetic = params["data"]["synthetic"]
    teacher, student = params["train_teacher"], params["distill_student"]
    line = (
        f"Config: {params['data']['source']} data ({synthetic.get('num_images')} images at "
        f"{synthetic.get('size')} px), {params['model']['teacher']} {teacher['epochs']} epochs and "
        f"{params['model']['student']} {student['epochs']} epochs at {teacher['image_size']} px, batch "
        f"{teacher['batch_size']}; commit {str(git['commit'])[:10]}"
    )
    if "params.yaml" in git["modified"]:
        line += " with params.yaml modified in the working tree (the JSON holds the params used)"
    return line + "."


def make_workspace(root: Path, params: dict[str, Any], env: dict[str, str]) -> None:
    for name in ("dvc.yaml", "inputs.yaml"):
        shutil.copy(ROOT / name, root / name)
    (root / "src").symlink_to(ROOT / "src", target_is_directory=True)
    # the stages call `.venv/bin/dbdgan` (inputs.yaml: cli)
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root, env)
    run([str(BIN / "dvc"), "init", "-q"], root, env)
    shutil.copy(ROOT / ".dvcignore", root / ".dvcignore")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tiny", dest="full", action="store_false",
                      help="the e2e test's tiny config (default)")
    mode.add_argument("--full", dest="full", action="store_true", help="params.yaml as it is")
    parser.set_defaults(full=False)
    parser.add_argument("--noop-runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace and print its path")
    add_common_args(parser, "pipeline")
    args = parser.parse_args()
    apply_runtime_env(args.allocator, args.omp_wait_policy)
    set_threads(args.threads)  # only so that the recorded thread count is the one the stages get

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the workspace's own sqlite store, as params.yaml says
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    config = "full (params.yaml)" if args.full else "tiny (e2e test config)"
    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {**vars(args), "out_dir": str(args.out_dir), "config": config},
    }
    report["machine"]["dvc"] = run([str(BIN / "dvc"), "--version"], ROOT, env)[1].strip()
    root = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        params = tiny_params() if not args.full else yaml.safe_load((ROOT / "params.yaml").read_text())
        report["settings"]["params"] = params
        make_workspace(root, params, env)
        print(f"dvc repro ({config}) in {root} ...", flush=True)
        cold_s, output = run([str(BIN / "dvc"), "repro"], root, env)
        stages = ran_stages(output)
        if stages != STAGES:
            raise RuntimeError(f"expected every stage to run, ran {stages}:\n{output[-3000:]}")
        print(f"cold dvc repro: {cold_s:.1f} s", flush=True)
        noop = []
        for _ in range(args.noop_runs):
            seconds, output = run([str(BIN / "dvc"), "repro"], root, env)
            if ran_stages(output):
                raise RuntimeError(f"no-op dvc repro ran stages {ran_stages(output)}:\n{output[-3000:]}")
            noop.append(seconds)
        print(f"no-op dvc repro: {statistics.median(noop):.2f} s (median of {len(noop)})", flush=True)
    finally:
        if args.keep:
            print(f"workspace kept at {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    rows = [
        {"run": f"cold `dvc repro`, {config}", "seconds": cold_s, "runs": 1},
        {"run": "no-op `dvc repro` (nothing changed)", "seconds": statistics.median(noop), "runs": len(noop)},
    ]
    report["results"] = {"cold_repro_s": cold_s, "stages": stages, "noop_repro_s": noop,
                         "noop_repro_median_s": statistics.median(noop)}
    sections = [
        "Wall time of `dvc repro` in a temporary copy of the project (fresh git + DVC repo, src/ "
        f"symlinked), {config}; all six stages ran cold, none on the no-op runs.",
        markdown_table([("run", "run", ""), ("seconds", "wall s (median)", ".2f"), ("runs", "runs", "d")],
                       rows),
    ]
    sections.append(config_line(report["settings"]["params"], report["machine"]["git"]))
    if not args.full:
        sections.append("The default pipeline's wall time: `python benchmarks/bench_pipeline.py --full`.")
    finish("pipeline", report, sections, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
