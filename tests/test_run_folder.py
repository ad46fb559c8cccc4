"""`dbdgan steps --dvc --root DIR`: a run folder as its own DVC pipeline (what `make train-real` reproduces)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_fixtures import REPO

from dbdgan import graph
from dbdgan.cli import main
from dbdgan.config import load_params

DVC = Path(sys.executable).with_name("dvc")
PROFILE = [str(REPO / "params.yaml"), str(REPO / "profiles" / "cuhk-cpu.yaml")]


def _write(root: Path, *extra: str) -> int:
    args = ["steps", "--dvc", "--root", str(root), "--params", PROFILE[0], "--params", PROFILE[1],
            "--set", "data.source=cuhk", "--set", "distill_student.epochs=3", "--input", "raw-photos",
            "--experiment", "dbdgan-real", "--teacher-name", "t-cuhk", "--student-name", "s-cuhk", *extra]
    return main(args)


def test_the_run_folder_holds_the_step_table_every_knob_and_its_inputs(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert _write(tmp_path / "runs" / "real") == 0
    root = tmp_path / "runs" / "real"
    tree = yaml.safe_load((root / "dvc.yaml").read_text())
    assert list(tree["stages"]) == [one.name for one in graph.STEPS]
    code = str(Path(graph.__file__).resolve().parent)
    assert all(stage["deps"][-1] == code for stage in tree["stages"].values())  # the library, by absolute path
    snapshot = yaml.safe_load((root / "params.yaml").read_text())
    expected = load_params(PROFILE, ["data.source=cuhk", "distill_student.epochs=3"]).model_dump(mode="json")
    assert snapshot == expected and snapshot["distill_student"]["epochs"] == 3
    inputs = yaml.safe_load((root / "inputs.yaml").read_text())
    assert inputs["raw_data"] == str(tmp_path / "raw-photos")
    assert inputs["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow/mlflow.db"  # the store of where make ran
    assert (inputs["experiment"], inputs["teacher_name"], inputs["student_name"]) == ("dbdgan-real", "t-cuhk", "s-cuhk")
    assert Path(inputs["cli"]).is_absolute() and os.access(inputs["cli"], os.X_OK)


def test_pretraining_runs_until_distillation_and_the_real_run_starts_from_it(tmp_path):
    assert _write(tmp_path / "pretrain", "--until", "distill_student") == 0
    assert list(yaml.safe_load((tmp_path / "pretrain" / "dvc.yaml").read_text())["stages"])[-1] == "distill_student"
    assert "plots" not in yaml.safe_load((tmp_path / "pretrain" / "dvc.yaml").read_text())
    assert _write(tmp_path / "real", "--init-from", str(tmp_path / "pretrain")) == 0
    stages = yaml.safe_load((tmp_path / "real" / "dvc.yaml").read_text())["stages"]
    for name, artifact in (("train_teacher", "teacher"), ("distill_student", "student")):
        init = f"{tmp_path}/pretrain/{graph.ARTIFACTS[artifact].path}"
        assert f"--init {init}" in stages[name]["cmd"] and init in stages[name]["deps"]
    assert "--init" not in stages["evaluate"]["cmd"]


def test_credentials_never_go_into_the_generated_files(tmp_path, capsys):
    assert _write(tmp_path / "r", "--tracking-uri", "http://alice:s3cret@mlflow.example:5000") == 1
    assert "MLFLOW_TRACKING_PASSWORD" in capsys.readouterr().err
    assert not (tmp_path / "r" / "inputs.yaml").exists()


@pytest.mark.skipif(not DVC.exists(), reason=f"dvc CLI not installed beside {sys.executable}")
def test_dvc_reads_the_run_folder_as_a_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")  # read when the stages run
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "real"
    assert _write(root) == 0
    assert yaml.safe_load((root / "inputs.yaml").read_text())["tracking_uri"] == ""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([str(DVC), "init", "-q", "--no-scm"], cwd=root, check=True, env=env)

    def dvc(*args: str) -> str:
        proc = subprocess.run([str(DVC), *args], cwd=root, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert dvc("stage", "list", "--name-only").split() == list(graph.dvc_stages())
    inputs = yaml.safe_load((root / "inputs.yaml").read_text())
    dry = dvc("repro", "--dry", "-s", "prepare")
    assert f"> {inputs['cli']} prepare --input \"{tmp_path / 'raw-photos'}\" --out data/prepared" in dry
