"""Issue 23 without a cluster: what the compiled pipeline asks of Kubernetes, and the component entry points.

No Kubernetes cluster can exist here, so the cluster side is read from what the real KFP compiler writes
(timeouts, the workspace, per-task params, the process count); the training component itself runs for real,
two processes joined by gloo, as it would on a node with two GPUs (NCCL there).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import torch
import yaml
from kfp_fixtures import TINY, component_params, dummy_credentials, moto_server, pipeline_tasks

from dbdgan import steps
from dbdgan.config import load_params
from dbdgan_kfp.pipelines import cli
from dbdgan_kfp.pipelines.k8s import DEFAULT_TIMEOUTS

REPO = Path(__file__).resolve().parents[1]


def _compile(tmp_path: Path, *flags: str) -> tuple[dict, dict]:
    out = tmp_path / "pipeline.yaml"
    assert cli.main(["compile", "--params", str(REPO / "params.yaml"), "--out", str(out), "--image", "r/d:1",
                     *flags]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]


def _tasks(spec: dict) -> dict[str, dict]:
    return {name: task for name, task in pipeline_tasks(spec).items() if not name.startswith("condition")}


def _inputs(task: dict) -> dict:
    return {key: value.get("runtimeValue", {}).get("constant", value)
            for key, value in task["inputs"].get("parameters", {}).items()}


def test_every_task_has_a_timeout_and_training_uses_every_gpu(tmp_path: Path) -> None:
    spec, platform = _compile(tmp_path, "--gpus", "2", "--timeout", "train_teacher=1000")
    executors = platform["deploymentSpec"]["executors"]
    tasks = _tasks(spec)
    assert len(tasks) == 8
    for name, task in tasks.items():
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        step = name.replace("-", "_")
        expected = 1000 if step == "train_teacher" else DEFAULT_TIMEOUTS[step]
        assert executors[executor]["activeDeadlineSeconds"] == str(expected), name
    for name in ("train-teacher", "distill-student"):  # 2 GPUs reserved: 2 processes started
        assert int(_inputs(tasks[name])["nproc"]) == 2
        assert _inputs(tasks[name])["workspace"] == "{{$.workspace_path}}"
        container = spec["deploymentSpec"]["executors"][
            spec["components"][tasks[name]["componentRef"]["name"]]["executorLabel"]]["container"]
        assert container["resources"]["accelerator"]["resourceCount"] == "2"
    assert platform["pipelineConfig"]["workspace"]["size"] == "20Gi"
    spec, _ = _compile(tmp_path, "--gpus", "1")
    assert int(_inputs(_tasks(spec)["train-teacher"])["nproc"]) == 1


def test_bad_timeouts_are_refused_with_the_flag_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["compile", "--params", str(REPO / "params.yaml"), "--out", str(tmp_path / "p.yaml")]
    assert cli.main([*args, "--timeout", "train=5"]) == 1
    assert "--timeout train=5: unknown step 'train'" in capsys.readouterr().err
    assert cli.main([*args, "--timeout", "prepare=soon"]) == 1
    assert "--timeout prepare=soon: expected a whole number of seconds" in capsys.readouterr().err


def test_a_student_param_leaves_the_earlier_tasks_inputs_unchanged(tmp_path: Path) -> None:
    first, _ = _compile(tmp_path, "--set", "distill_student.epochs=3")
    second, _ = _compile(tmp_path, "--set", "distill_student.epochs=30", "--set", "distill_student.w_adv=0.5")
    before, after = _tasks(first), _tasks(second)
    for name in ("prepare", "validate", "train-teacher"):
        assert _inputs(before[name]) == _inputs(after[name]), name  # same cache key: reused
        assert before[name]["cachingOptions"]["enableCache"] is True
    assert json.loads(_inputs(after["distill-student"])["params"])["distill_student"]["epochs"] == 30
    assert _inputs(before["distill-student"]) != _inputs(after["distill-student"])
    assert "distill_student" not in json.loads(_inputs(after["train-teacher"])["params"])
    teacher_change, _ = _compile(tmp_path, "--set", "train_teacher.epochs=4")
    assert _inputs(_tasks(teacher_change)["train-teacher"]) != _inputs(before["train-teacher"])
    assert _inputs(_tasks(teacher_change)["prepare"]) == _inputs(before["prepare"])


def test_an_imported_teacher_replaces_the_teacher_training(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    spec, _ = _compile(tmp_path, "--teacher", "models:/dbd-teacher-cuhk/3")
    tasks = _tasks(spec)
    assert "train-teacher" not in tasks
    assert _inputs(tasks["import-teacher"])["source"] == "models:/dbd-teacher-cuhk/3"
    assert tasks["import-teacher"]["cachingOptions"].get("enableCache", False) is False  # an alias may move
    for name in ("distill-student", "evaluate", "register"):
        source = tasks[name]["inputs"]["artifacts"]["teacher"]["taskOutputArtifact"]
        assert source == {"outputArtifactKey": "teacher", "producerTask": "import-teacher"}
    args = ["compile", "--params", str(REPO / "params.yaml"), "--out", str(tmp_path / "p.yaml"),
            "--teacher", "models:/t/1", "--pretrain-params", str(REPO / "params.yaml")]
    assert cli.main(args) == 1
    assert "--teacher and --pretrain-params exclude each other" in capsys.readouterr().err


def test_without_a_workspace_the_compile_says_nothing_of_one(tmp_path: Path) -> None:
    spec, platform = _compile(tmp_path, "--workspace-size", "0")
    assert "pipelineConfig" not in platform
    assert _inputs(_tasks(spec)["train-teacher"])["workspace"] == ""
    _, platform = _compile(tmp_path, "--workspace-storage-class", "fast-rwo")
    assert platform["pipelineConfig"]["workspace"]["kubernetes"]["pvcSpecPatch"] == {"storageClassName": "fast-rwo"}


def _artifact(path: Path) -> SimpleNamespace:
    return SimpleNamespace(path=str(path), metadata={})


def test_the_training_component_runs_one_process_per_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nproc=2 through the component's own function: two ranks (gloo on CPU), rank 0 writes the model, and the
    checkpoint lands in the workspace under the task's name."""
    from dbdgan_kfp.components.train_teacher import train_teacher

    overrides = [o for o in TINY if not o.startswith("train_teacher.epochs")] + ["train_teacher.epochs=1"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    dataset = tmp_path / "dataset"
    steps.prepare(load_params(REPO / "params.yaml", overrides), out=dataset)
    teacher, metrics = _artifact(tmp_path / "teacher.pt"), SimpleNamespace(log_metric=lambda *a: None)
    train_teacher.python_func(params=component_params(*overrides),
                              mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="ddp",
                              dataset=_artifact(dataset), teacher=teacher, metrics=metrics,
                              workspace=str(tmp_path / "ws"), task="train_teacher", nproc=2)
    payload = torch.load(tmp_path / "teacher.pt", weights_only=True)
    assert payload["arch"] == "teacher_tiny" and payload["metadata"]["epoch"] == 1
    assert (tmp_path / "ws" / "checkpoints" / "train_teacher" / "last.pt").is_file()
    assert teacher.metadata["mlflow_run_id"]  # rank 0's result reached the component


def test_prepare_refuses_an_s3_dataset_that_changed_after_submission(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from dbdgan.storage import dataset_digest, upload
    from dbdgan_kfp.components.prepare import prepare

    with moto_server() as endpoint:
        for name, value in {**dummy_credentials(), "DBDGAN_S3_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(name, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="raw")
        folder = tmp_path / "raw"
        folder.mkdir()
        (folder / "a.txt").write_text("one")
        upload(folder, "s3://raw/set")
        digest = dataset_digest("s3://raw/set")
        (folder / "a.txt").write_text("two")
        upload(folder, "s3://raw/set")  # replaced under the same URI
        assert dataset_digest("s3://raw/set") != digest
        outputs = {"dataset": _artifact(tmp_path / "d"), "summary": _artifact(tmp_path / "s.md"),
                   "contact_sheet": _artifact(tmp_path / "c.html")}
        with pytest.raises(ValueError, match=r"the dataset at s3://raw/set changed after the run was submitted"):
            prepare.python_func(params=component_params("data.source=cuhk"), data_uri="s3://raw/set",
                                data_digest=digest, **outputs)
        assert not (tmp_path / "d").exists()
