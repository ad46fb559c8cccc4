"""Issue 23 under kfp.local: a training task killed after its first epoch resumes when retried, and a second
pipeline distils a new student from the teacher the first one registered, without training a teacher.

kfp.local's SubprocessRunner runs each task as a process of this venv and honours the tasks' retry policy,
as a cluster would after a pre-empted pod; the run's workspace is a folder here (a PVC on a cluster). The
kill is a real SIGKILL of the task's process. MLflow is a real sqlite store.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import TINY_FILES, tiny_params

from dbdgan import steps
from dbdgan.tracking import Tracking
from dbdgan_kfp.pipelines import cli

pytestmark = pytest.mark.e2e

# The smallest run that can be killed mid-training: two teacher epochs, killed after the first one's checkpoint
EPOCHS = 2
OVERRIDES = [f"train_teacher.epochs={EPOCHS}"]  # on profiles/tiny.yaml


def _task_pids(function: str) -> list[int]:
    """Processes of this machine that run the KFP executor for `function` (the SubprocessRunner's tasks)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kfp.dsl.executor_main" in b" ".join(args) and function.encode() in args:
            pids.append(int(entry.name))
    return pids


def _kill_after_first_checkpoint(checkpoint: Path, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the teacher's task as soon as its first `last.pt` exists (it then trains the next epoch)."""
    while not stop.is_set():
        if checkpoint.is_file():
            for pid in _task_pids("train_teacher"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return
        time.sleep(0.01)


def _run_local(root: Path, store: str, workspace: Path, *extra: str) -> int:
    args = ["run-local", *(arg for path in TINY_FILES for arg in ("--params", str(path))), "--pipeline-root", str(root),
            "--workspace", str(workspace), "--mlflow-uri", store, "--teacher-name", "rs-teacher",
            "--student-name", "rs-student", "--mlflow-experiment", "resume", "-v"]  # -v: the tasks' own log lines
    for override in OVERRIDES:
        args += ["--set", override]
    return cli.main([*args, *extra])


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_a_killed_training_task_resumes_on_retry_and_a_registered_teacher_is_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    workspace = tmp_path / "workspace"
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_after_first_checkpoint,
                               args=(workspace / "checkpoints" / "train_teacher" / "last.pt", stop, killed))
    watcher.start()
    try:
        code = _run_local(tmp_path / "kfp", store, workspace, "--retries", "1")
    finally:
        stop.set()
        watcher.join()
    logs = capfd.readouterr()
    output = logs.out + logs.err
    assert code == 0, output[-6000:]
    assert killed, "the teacher's task was never killed"
    resumed = [line for line in output.splitlines() if "resuming train_teacher from" in line]
    assert resumed, output[-6000:]
    resumed_after = int(resumed[0].rsplit("after epoch", 1)[1].split()[0])
    assert 1 <= resumed_after < EPOCHS  # it carried on with the next epoch, not from epoch 1

    # the same training, never interrupted, on the same prepared data: the same weights, bit for bit
    (dataset,) = (tmp_path / "kfp").glob("*/prepare/dataset")
    (retried,) = (tmp_path / "kfp").glob("*/train-teacher/teacher")
    reference = steps.train_teacher(tiny_params(OVERRIDES), dataset=dataset,
                                    out=tmp_path / "reference.pt", checkpoints=tmp_path / "reference-ckpt",
                                    tracking=Tracking(uri=f"sqlite:///{tmp_path / 'reference.db'}"))
    assert [row["epoch"] for row in reference["history"]] == list(range(1, EPOCHS + 1))
    ours, theirs = _state(retried), _state(tmp_path / "reference.pt")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)

    # a new student from the registered teacher: no teacher training, the lineage names that teacher
    client = MlflowClient(tracking_uri=store)
    teacher = client.get_model_version("rs-teacher", "1")
    code = _run_local(tmp_path / "kfp-2", store, tmp_path / "workspace-2", "--teacher", "models:/rs-teacher/1",
                      "--set", "distill_student.w_adv=0.02")  # another distillation of the same teacher
    logs = capfd.readouterr()
    assert code == 0, (logs.out + logs.err)[-6000:]
    (run_dir,) = (tmp_path / "kfp-2").iterdir()
    tasks = {path.name for path in run_dir.iterdir() if path.is_dir()}
    assert "import-teacher" in tasks and "train-teacher" not in tasks
    (imported,) = run_dir.glob("import-teacher/teacher")
    assert all(torch.equal(a, b) for a, b in zip(_state(imported).values(), _state(retried).values(), strict=True))
    student = client.get_model_version_by_alias("rs-student", "challenger")
    assert student.tags["teacher_source"] == "models:/rs-teacher/1"
    assert student.tags["teacher_sha256"] == teacher.tags["model_sha256"]
    assert len(client.search_model_versions("name='rs-teacher'")) == 1  # the same file: no second version
