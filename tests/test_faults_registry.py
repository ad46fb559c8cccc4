"""Issue 13, the registry: registration is all-or-nothing and idempotent, racing registrations take turns,
the promotion lock survives crashed holders and contention, and S3 prefixes and services are checked first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch
from kfp_fixtures import component_params, free_port, port_closed
from mlflow import MlflowClient

from dbdgan.aliases import INCOMPLETE, REGISTRATION_TAG, promote, run_gate
from dbdgan.checkpoint import save_model_file
from dbdgan.config import load_params
from dbdgan.models import create_model
from dbdgan.registration import register_models
from dbdgan.registry_lock import LOCK_SUFFIX, LockHeldError, registry_lock
from dbdgan.storage import StorageError
from dbdgan.tracking import ModelNames, Tracking, configure

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
NAMES = ModelNames(teacher="fault-teacher", student="fault-student")


def _metrics(path: Path, max_f: float, mae: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"max_f": max_f, "mae": mae, "n_images": 4,
                                "settings": {"split": "test", "beta2": 0.3},
                                "efficiency": {"params": 100_000, "latency_ms_b1": 5.0}}))


def workspace(root: Path, seed: int = 0, store: Path | None = None) -> dict:
    """Model files, metrics and a manifest under `root`, and a sqlite store (shared when `store` is given)."""
    torch.manual_seed(seed)
    files = {}
    for role, arch in (("teacher", "teacher_tiny"), ("student", "mobile_tiny")):
        files[role] = root / f"{role}.pt"
        save_model_file(files[role], arch, {}, create_model(arch), {"epoch": 1, "input_size": 48})
    _metrics(root / "metrics/teacher.json", 0.85, 0.10)
    _metrics(root / "metrics/student.json", 0.80, 0.12)
    (root / "manifest.csv").write_text("id,split\na,test\n")
    store = store or root / "mlflow.db"
    return {"params": load_params(REPO / "params.yaml", ["register.service_timeout_s=10"]), "models": files,
            "names": NAMES, "metrics_dir": root / "metrics", "manifest": root / "manifest.csv",
            "tracking": Tracking(uri=f"sqlite:///{store}", artifact_location=str(store.parent / "artifacts"))}


def _client(ws: dict) -> MlflowClient:
    configure(ws["tracking"], 10)
    return MlflowClient()


def _versions(client: MlflowClient, name: str) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))


# --- 8. all-or-nothing, idempotent, serialised --------------------------------------------------------------

def test_a_rerun_of_the_same_register_reuses_its_versions(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    first = register_models(**ws)
    again = register_models(**ws)
    client = _client(ws)
    assert _versions(client, NAMES.teacher) == [1] and _versions(client, NAMES.student) == [1]
    assert [again[r]["version"] for r in ("teacher", "student")] == [1, 1]
    assert again["student"]["reused"] and not first["student"]["reused"]
    assert client.get_model_version(NAMES.student, "1").tags[REGISTRATION_TAG] == "complete"


def test_a_failure_part_way_leaves_the_registry_as_it_was(tmp_path: Path, monkeypatch) -> None:
    ws = workspace(tmp_path)
    real = mlflow.register_model

    def fails_for_the_student(model_uri, name, **kwargs):
        if name == NAMES.student:
            raise ConnectionError("tracking server went away")
        return real(model_uri, name, **kwargs)

    monkeypatch.setattr(mlflow, "register_model", fails_for_the_student)
    with pytest.raises(ConnectionError):
        register_models(**ws)
    client = _client(ws)
    assert client.search_registered_models() == []  # the teacher's version was undone, with its model
    monkeypatch.setattr(mlflow, "register_model", real)
    result = register_models(**ws)  # the rerun registers both, as version 1
    assert [result[r]["version"] for r in ("teacher", "student")] == [1, 1]


def test_what_cannot_be_undone_stays_incomplete_and_is_refused_by_the_gate_and_promote(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    ws = workspace(tmp_path)
    real = mlflow.register_model
    client = _client(ws)

    def server_dies_after_the_teacher(model_uri, name, **kwargs):
        if name == NAMES.student:
            monkeypatch.setattr(MlflowClient, "delete_model_version",
                                lambda *a, **k: (_ for _ in ()).throw(ConnectionError("server gone")))
            raise ConnectionError("server gone")
        return real(model_uri, name, **kwargs)

    monkeypatch.setattr(mlflow, "register_model", server_dies_after_the_teacher)
    with pytest.raises(ConnectionError):
        register_models(**ws)
    monkeypatch.undo()
    teacher = client.get_model_version(NAMES.teacher, "1")
    assert teacher.tags[REGISTRATION_TAG] == INCOMPLETE
    assert "challenger" not in client.get_registered_model(NAMES.teacher).aliases
    with pytest.raises(ValueError, match="incomplete registration"):
        promote(NAMES.teacher, 1, reason="by hand", client=client)
    with pytest.raises(ValueError, match="incomplete registration"):
        run_gate(NAMES.teacher, 1, client=client)
    result = register_models(**ws)  # the rerun completes the version it left
    assert result["teacher"]["version"] == 1 and result["teacher"]["reused"]
    assert client.get_model_version(NAMES.teacher, "1").tags[REGISTRATION_TAG] == "complete"


RACER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_faults_registry import workspace
from dbdgan.registration import register_models

root, go, store, seed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
ws = workspace(root, seed=seed, store=store)
(root / "ready").touch()
while not go.exists():
    time.sleep(0.01)
print(register_models(**ws)["student"]["version"])
"""


def test_three_registers_racing_on_one_sqlite_store_take_turns(tmp_path: Path) -> None:
    store = tmp_path / "shared" / "mlflow.db"
    store.parent.mkdir()
    configure(Tracking(uri=f"sqlite:///{store}", artifact_location=str(store.parent / "artifacts")), 10)
    script = tmp_path / "racer.py"
    script.write_text(RACER.format(tests=str(TESTS)))
    go = tmp_path / "go"
    racers = []
    for seed in range(3):
        root = tmp_path / f"r{seed}"
        root.mkdir()
        racers.append((root, subprocess.Popen([sys.executable, str(script), str(root), str(go), str(store),
                                               str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              text=True)))
    deadline = time.monotonic() + 120
    while not all((root / "ready").exists() for root, _ in racers):
        assert time.monotonic() < deadline and all(p.poll() is None for _, p in racers), \
            [p.communicate()[1][-2000:] for _, p in racers if p.poll() is not None]
        time.sleep(0.05)
    go.touch()
    versions = []
    for _, proc in racers:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        versions.append(int(out.split()[-1]))
    client = MlflowClient(f"sqlite:///{store}")
    assert sorted(versions) == [1, 2, 3]
    assert _versions(client, NAMES.student) == [1, 2, 3] and _versions(client, NAMES.teacher) == [1, 2, 3]
    assert not [m.name for m in client.search_registered_models() if "lock" in m.name]


# --- 9. the promotion lock ---------------------------------------------------------------------------------

HOLD_AND_DIE = """
import os, sys
from mlflow import MlflowClient
from dbdgan.registry_lock import registry_lock
with registry_lock(sys.argv[2], MlflowClient(sys.argv[1])):
    print("held", flush=True)
    os._exit(9)  # killed while holding it
"""


def test_a_crashed_holders_lock_does_not_block_promotion(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    register_models(**ws)
    uri = ws["tracking"].uri
    died = subprocess.run([sys.executable, "-c", HOLD_AND_DIE, uri, NAMES.student], capture_output=True,
                          text=True, timeout=120)
    assert died.returncode == 9 and "held" in died.stdout, died.stderr[-2000:]
    client = MlflowClient(uri)
    assert client.get_registered_model(NAMES.student + LOCK_SUFFIX)  # the dead holder's lock is still there
    start = time.monotonic()
    with registry_lock(NAMES.student, client, timeout_s=5.0):
        pass
    assert time.monotonic() - start < 5.0  # not the old 10 minutes of TimeoutError


def test_a_live_holder_is_named_in_a_clear_error(tmp_path: Path) -> None:
    client = _client(workspace(tmp_path))
    held = rf"still held by .*@.*:{os.getpid()} .*gave up after 0.5 s"
    with (registry_lock(NAMES.student, client), pytest.raises(LockHeldError, match=held),
          registry_lock(NAMES.student, client, timeout_s=0.5)):
        pass


def test_many_waiters_breaking_one_stale_lock_never_hold_it_together(tmp_path: Path) -> None:
    client = _client(workspace(tmp_path))
    client.create_registered_model(NAMES.student + LOCK_SUFFIX, tags={"owner": "ghost@elsewhere:1"})
    inside, overlaps, errors = [0], [], []
    guard = threading.Lock()

    def waiter() -> None:
        try:
            with registry_lock(NAMES.student, client, timeout_s=60, stale_s=2.0):
                with guard:
                    inside[0] += 1
                    overlaps.append(inside[0])
                time.sleep(0.3)
                with guard:
                    inside[0] -= 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert overlaps == [1, 1, 1]  # each entered alone
    assert NAMES.student + LOCK_SUFFIX not in [m.name for m in client.search_registered_models()]


# --- 10. an S3 prefix without its completion marker is not a dataset ------------------------------------------

def test_the_prepare_component_refuses_an_unfinished_upload(s3_server: str, tmp_path: Path, monkeypatch) -> None:
    import boto3
    from kfp.dsl import HTML, Dataset, Markdown
    from test_faults_data import _pairs

    from components.prepare import prepare
    from dbdgan.storage import MARKER, upload

    bucket = "fault-prepare"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    upload(_pairs(tmp_path / "raw", [str(i) for i in range(6)]), f"s3://{bucket}/raw/cuhk")
    boto3.client("s3", endpoint_url=s3_server).delete_object(Bucket=bucket, Key=f"raw/cuhk/{MARKER}")
    monkeypatch.setenv("DBDGAN_S3_MAX_ATTEMPTS", "1")
    outputs = {"dataset": Dataset(uri=str(tmp_path / "dataset")), "summary": Markdown(uri=str(tmp_path / "s.md")),
               "contact_sheet": HTML(uri=str(tmp_path / "c.html"))}
    with pytest.raises(StorageError, match=r"incomplete upload: .*_SUCCESS\.json .*is missing"):
        prepare.python_func(params=component_params("data.source=cuhk"),
                            data_uri=f"s3://{bucket}/raw/cuhk", **outputs)
    assert not (tmp_path / "dataset").exists()


# --- 8 (cont.). the register component reaches S3 before it registers anything ----------------------------

def test_the_register_component_checks_s3_before_the_first_write(tmp_path: Path, monkeypatch) -> None:
    from kfp.dsl import Artifact, Dataset, Markdown, Model

    from components.register import register

    ws = workspace(tmp_path)
    dead = f"http://127.0.0.1:{free_port()}"
    assert port_closed(dead, timeout=0)  # S3 is down: nothing answers there
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION":
                        "us-east-1", "DBDGAN_S3_ENDPOINT_URL": dead, "DBDGAN_S3_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.csv").write_bytes(ws["manifest"].read_bytes())
    with pytest.raises(StorageError, match="endpoint unreachable"):
        register.python_func(params=component_params(),
                             mlflow_tracking_uri=ws["tracking"].uri, experiment="dbdgan",
                             teacher_name=NAMES.teacher, student_name=NAMES.student, run_id="r1",
                             reports_uri="s3://reports/runs", dataset=Dataset(uri=str(tmp_path / "data")),
                             teacher=Model(uri=str(ws["models"]["teacher"])),
                             student=Model(uri=str(ws["models"]["student"])),
                             scores=Artifact(uri=str(ws["metrics_dir"])),
                             registered=Artifact(uri=str(tmp_path / "registered.json")),
                             summary=Markdown(uri=str(tmp_path / "summary.md")))
    assert _client(ws).search_registered_models() == []
