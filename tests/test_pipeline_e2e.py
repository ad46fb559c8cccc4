"""The whole DVC pipeline on a tiny config in a temporary repo: real `dvc repro`, real MLflow registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_fixtures import REPO

from dbdgan.graph import STEPS

BIN = Path(sys.executable).parent
STAGES = [step.name for step in STEPS]


def _tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["synthetic"].update(num_images=30, size=48)
    for stage in ("train_teacher", "distill_student"):
        params[stage].update(epochs=1, batch_size=4, image_size=48)
    params["evaluate"].update(efficiency_size=64, efficiency_runs=1, grid_samples=2)
    return params


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _ran_stages(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    for name in ("dvc.yaml", "inputs.yaml", "scripts/dbdgan"):  # inputs.yaml's cli: scripts/dbdgan
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    (root / "src").symlink_to(REPO / "src", target_is_directory=True)
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)  # the venv scripts/dbdgan runs
    (root / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    return root


@pytest.mark.slow
def test_dvc_pipeline_end_to_end(workspace):
    output = _run([str(BIN / "dvc"), "repro"], workspace)
    assert _ran_stages(output) == STAGES

    shown = json.loads(_run([str(BIN / "dvc"), "metrics", "show", "--json"], workspace))
    metrics_files = next(iter(shown.values()))["data"]
    for role in ("teacher", "student"):
        data = metrics_files[f"metrics/{role}.json"]["data"]
        assert 0.0 <= data["max_f"] <= 1.0
        assert 0.0 <= data["mae"] <= 1.0

    registered = json.loads((workspace / "reports" / "registered.json").read_text())
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace}/mlflow/mlflow.db")
    for role, name in (("teacher", "dbd-teacher"), ("student", "dbd-student")):
        version = client.get_model_version_by_alias(name, "challenger")
        assert int(version.version) == registered[role]["version"]
        evaluated = json.loads((workspace / "metrics" / f"{role}.json").read_text())
        assert float(version.tags["metric.max_f"]) == pytest.approx(evaluated["max_f"], rel=1e-5)

    again = _run([str(BIN / "dvc"), "repro"], workspace)
    assert _ran_stages(again) == ["register"]  # always reruns; its versions are reused, not duplicated

    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["distill_student"]["w_consistency"] = 0.5
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _run([str(BIN / "dvc"), "repro"], workspace)
    assert _ran_stages(changed) == ["distill_student", "evaluate", "register"]
    assert int(client.get_model_version_by_alias("dbd-student", "challenger").version) == 2
