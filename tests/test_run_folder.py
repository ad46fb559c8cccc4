"""`dbdgan steps --dvc --root DIR`: a run folder as its own DVC pipeline (what `make train-real` reproduces), and
the plans of the three runners (make train-real, the root dvc.yaml, the compiled KFP pipeline) agreeing step by
step; their real runs are test_kfp_integration.py's (kfp.local and make train-real) and test_dvc_history.py's."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp_fixtures import pipeline_tasks
from pipeline_fixtures import REPO, TINY_PROFILE

from dbdgan import dvc_pipeline, graph
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

    assert dvc("stage", "list", "--name-only").split() == list(dvc_pipeline.dvc_stages())
    inputs = yaml.safe_load((root / "inputs.yaml").read_text())
    dry = dvc("repro", "--dry", "-s", "prepare")
    assert f"> {inputs['cli']} prepare --input \"{tmp_path / 'raw-photos'}\" --out data/prepared" in dry


def _subset(part: Any, whole: Any) -> bool:
    """Every key of `part` is in `whole` with the same value (recursively)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and _subset(v, whole[k]) for k, v in part.items())
    return part == whole


def _at(tree: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def _upstream(stages: dict[str, dict]) -> dict[str, set[str]]:
    """Stage -> the stages whose outputs it depends on (DVC's edges)."""
    producer = {out: name for name, stage in stages.items() for out in stage.get("outs", [])
                for out in ([out] if isinstance(out, str) else list(out))}
    return {name: {producer[dep] for dep in stage["deps"] if dep in producer} for name, stage in stages.items()}


def test_kfp_dvc_and_make_plan_the_same_steps_with_the_same_params(tmp_path: Path) -> None:
    """What each runner would issue, without running it: the commands of `make -n train-real` (which write a run
    folder's DVC pipeline and `dvc repro` it), the root dvc.yaml, and the compiled KFP pipeline. Every step of the
    table is a stage of both DVC pipelines with the same command and deps, and a KFP task running the step's
    component, wired to the same upstream steps and given the same params."""
    raw, runs, overlay = tmp_path / "raw", tmp_path / "runs", TINY_PROFILE
    dry = subprocess.run(["make", "-n", "-s", "-o", ".venv/.installed", "train-real", f"DATA={raw}",
                          f"PROFILE={overlay}", f"RUNS={runs}", "EXTRA_EVAL="], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    (write,) = [shlex.split(line) for line in dry if " steps --dvc " in line]
    (repro,) = [line for line in dry if line.rstrip().endswith("dvc repro")]
    assert f"cd {runs / 'real'} && " in repro
    assert write[write.index("--root") + 1] == str(runs / "real")
    assert write[1:3] == ["steps", "--dvc"] and Path(write[0]).name == "dbdgan"
    subprocess.run([str(Path(sys.executable).with_name("dbdgan")), *write[1:]], cwd=REPO, check=True,
                   capture_output=True)  # what make would run first
    folder = runs / "real"
    run_stages = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]
    root_stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    names = [one.name for one in graph.STEPS]
    assert list(run_stages) == list(root_stages) == names
    code = str(Path(graph.__file__).resolve().parent)
    for name in names:  # the same command line (vars from each folder's inputs.yaml), deps but for the code's path
        run, root = run_stages[name], root_stages[name]
        assert run["cmd"] == root["cmd"] and run["cmd"].split()[1] == graph.step(name).command, name
        assert run["deps"][:-1] == root["deps"][:-1] and (run["deps"][-1], root["deps"][-1]) == (code, "src/dbdgan")
        assert run.get("outs") == root.get("outs") and run.get("params") == root.get("params"), name
    assert yaml.safe_load((folder / "inputs.yaml").read_text())["raw_data"] == str(raw)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    assert params == load_params([REPO / "params.yaml", overlay], ["data.source=cuhk"]).model_dump(mode="json")

    # the KFP pipeline compiled from the same files and overrides
    from dbdgan_kfp.pipelines import cli

    assert cli.main(["compile", "--params", str(REPO / "params.yaml"), "--params", str(overlay), "--set",
                     "data.source=cuhk", "--out", str(tmp_path / "pipeline.yaml"), "--local"]) == 0
    spec = next(yaml.safe_load_all((tmp_path / "pipeline.yaml").read_text()))
    tasks = pipeline_tasks(spec)
    upstream = _upstream(run_stages)
    command = {one.name: one.command for one in graph.STEPS}
    for one in graph.STEPS:
        task = tasks[one.command]
        component = spec["components"][task["componentRef"]["name"]]
        executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        args = executor["args"]
        assert args[args.index("--function_to_execute") + 1] == one.name  # the step's own component
        assert set(task.get("dependentTasks", [])) == {command[up] for up in upstream[one.name]}, one.name
        given = yaml.safe_load(task["inputs"]["parameters"]["params"]["runtimeValue"]["constant"])
        assert _subset(given, params), one.name  # the merged params, each task its step's part ...
        for key in run_stages[one.name].get("params", []):  # ... holding everything DVC tracks for the stage
            if isinstance(key, str):
                assert _at(given, key) == _at(params, key), (one.name, key)
