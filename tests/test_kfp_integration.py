"""The KFP pipeline end to end with kfp.local against real services on 127.0.0.1, started here, and the
KFP == DVC == make agreement.

Services: the suite's moto S3 server (conftest `moto_endpoint`) and an `mlflow server` process (sqlite store in
tmp, artifacts proxied to s3://<bucket>/mlflow on moto). The suite's one full kfp.local run (`shared_run`, through
`dbdgan pipeline run-local`: every step a subprocess of this venv) holds everything the assertions need at once:
synthetic pre-training, then the real trainings from it on a CUHK-layout folder in the bucket, on profiles/tiny.yaml
with a gate that promotes, registering, copying reports. A recognisable secret is planted as AWS_SECRET_ACCESS_KEY
and searched for in every output afterwards. `make train-real` runs once, on the same folder and profile, and must
prepare the same manifest and decide alike; that every runner issues the same steps with the same params is
checked on their plans, without running them (test_run_folder.py), and the root dvc.yaml's run is
test_dvc_history.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from kfp_fixtures import (
    MlflowServer,
    component_params,
    dummy_credentials,
    files_containing,
    mlflow_server,
    port_closed,
)
from pipeline_fixtures import TINY_PROFILE, merged_tree

from dbdgan_kfp.pipelines import cli

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
BUCKET = "dbdgan-it"
PAIRS = 24  # photos of the shared run's CUHK-layout folder
# The shared run's gate: floors every tiny model passes with no champion yet, so the champion step runs. That the
# decision is the register step's (promotion.run_gate), and the condition on it, is test_kfp_pipeline's and
# test_promotion's; here both real runners must reach the same decision.
GATE = ["register.gate.min_max_f=0.0", "register.gate.max_mae=1.0"]
PRETRAIN = {"seed": 1, "data": {"synthetic": {"num_images": 16}}}  # on top of profiles/tiny.yaml


def _env_values(endpoint: str, folder: Path) -> dict[str, str]:
    """Credentials (with the planted secret) and endpoints, inherited by every step's subprocess."""
    return {
        **dummy_credentials(),
        "DBDGAN_S3_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": str(folder / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        # bounded client retries, so that an outage fails within seconds here
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "DBDGAN_S3_MAX_ATTEMPTS": "2",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background job workers: faster start, clean stop
    }


def _set_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, folder: Path) -> dict[str, str]:
    values = _env_values(endpoint, folder)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in ("MLFLOW_TRACKING_URI", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    monkeypatch.chdir(folder)  # nothing a step writes may land in the working tree
    return values


@pytest.fixture
def env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    return _set_env(monkeypatch, moto_endpoint, tmp_path)


def _run_local(root: Path, mlflow_uri: str, *extra: str) -> int:
    """`dbdgan pipeline run-local` in this process on params.yaml + profiles/tiny.yaml."""
    args = ["run-local", "--params", str(REPO / "params.yaml"), "--params", str(TINY_PROFILE),
            "--pipeline-root", str(root), "--mlflow-uri", mlflow_uri, "--reports-uri", f"s3://{BUCKET}/reports"]
    return cli.main([*args, *extra])


def _bucket_objects(endpoint: str, prefix: str = "") -> dict[str, bytes]:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for obj in page.get("Contents", [])]
    return {key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}


def _bucket_prefix(client: Any, source: str) -> str:
    """Bucket prefix of a model version's artifacts: models:/<id> -> mlflow-artifacts:/... -> mlflow/..."""
    if source.startswith("models:/"):
        source = client.get_logged_model(source.removeprefix("models:/").split("/")[0]).artifact_location
    assert source.startswith("mlflow-artifacts:/"), f"artifacts not proxied by the server: {source}"
    return "mlflow/" + source.removeprefix("mlflow-artifacts:").strip("/")


def _raw_pairs(folder: Path, count: int = 12, size: int = 48) -> Path:
    """A tiny CUHK-layout folder: images/*.jpg and masks/*.png (255 = blurred)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for index in range(count):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[:, : size * (index % 4 + 1) // 5] = 255
        Image.fromarray(image).save(folder / "images" / f"img{index:02d}.jpg", quality=90)
        Image.fromarray(mask).save(folder / "masks" / f"img{index:02d}.png")
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _overlay(folder: Path) -> Path:
    """profiles/tiny.yaml with the shared run's gate: the profile both real runners get (make's PROFILE)."""
    gate = {key.removeprefix("register.gate."): float(value) for key, value in (o.split("=") for o in GATE)}
    tree = merged_tree(yaml.safe_load(TINY_PROFILE.read_text()), {"register": {"gate": gate}})
    path = folder / "tiny-gate.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@dataclass
class SharedRun:
    root: Path  # the pipeline root (task outputs)
    folder: Path  # its working directory
    raw: Path  # the CUHK-layout folder (also in the bucket at raw/cuhk)
    overlay: Path
    server: MlflowServer
    server_dir: Path
    output: str  # stdout and stderr of the run and every task
    elapsed: float
    env: dict[str, str]
    endpoint: str

    def task_file(self, task: str, key: str) -> Path:
        (path,) = self.root.glob(f"*/{task}/{key}")
        return path


@pytest.fixture(scope="module")
def shared_run(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedRun]:
    """The one full kfp.local run: pre-training, the real run from it on raw data in S3, registration."""
    from dbdgan.storage import upload

    folder = tmp_path_factory.mktemp("kfp-run")
    with pytest.MonkeyPatch.context() as monkeypatch:
        values = _set_env(monkeypatch, moto_endpoint, folder)
        raw = _raw_pairs(folder / "raw", count=PAIRS)
        upload(raw, f"s3://{BUCKET}/raw/cuhk")
        overlay = _overlay(folder)
        pretrain = folder / "pretrain.yaml"
        pretrain.write_text(yaml.safe_dump(PRETRAIN))
        server_dir, root = folder / "mlflow", folder / "kfp"
        server_dir.mkdir()
        with mlflow_server(server_dir, f"s3://{BUCKET}/mlflow", values) as server:
            args = [sys.executable, "-m", "dbdgan_kfp.pipelines.cli", "run-local",
                    "--params", str(REPO / "params.yaml"), "--params", str(overlay), "--set", "data.source=cuhk",
                    "--pretrain-params", str(REPO / "params.yaml"), "--pretrain-params", str(TINY_PROFILE),
                    "--pretrain-params", str(pretrain), "--data-uri", f"s3://{BUCKET}/raw/cuhk",
                    "--pipeline-root", str(root), "--mlflow-uri", server.uri, "--reports-uri", f"s3://{BUCKET}/reports",
                    "--student-name", "it-student", "--teacher-name", "it-teacher", "--mlflow-experiment", "it",
                    "--pretrain-experiment", "it-pretrain"]
            start = time.monotonic()
            proc = subprocess.run(args, cwd=folder, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                                  text=True, timeout=900)
            elapsed = time.monotonic() - start
            output = proc.stdout + proc.stderr
            assert proc.returncode == 0, output[-6000:]
            print(f"the shared kfp.local run took {elapsed:.0f} s")
            yield SharedRun(root, folder, raw, overlay, server, server_dir, output, elapsed, values, moto_endpoint)


def test_pipeline_registers_the_student_and_leaks_no_secret(shared_run: SharedRun) -> None:
    from mlflow import MlflowClient

    run = shared_run
    client = MlflowClient(tracking_uri=run.server.uri)
    student = client.get_model_version_by_alias("it-student", "challenger")
    teacher = client.get_model_version_by_alias("it-teacher", "challenger")
    assert student.version == "1" and teacher.version == "1"
    assert student.tags["role"] == "student" and "metric.max_f" in student.tags
    runs = client.search_runs([client.get_experiment_by_name("it").experiment_id])
    run_params = {k: v for one in runs for k, v in one.data.params.items()}
    assert run_params.get("model.student") == "mobile_tiny"  # the profile reached the steps
    for one in runs:  # the evaluate step attached its scores and plots to both training runs
        attached = {a.path for a in client.list_artifacts(one.info.run_id, "evaluation")}
        role = one.data.tags["dbdgan.stage"].split("_")[-1]
        assert {f"evaluation/{role}.json", "evaluation/curves.png"} <= attached, (role, attached)
    model_prefix = _bucket_prefix(client, student.source)

    # the student's MLflow artifacts live in the bucket (proxied by the server to s3://BUCKET/mlflow)
    objects = _bucket_objects(run.endpoint)
    assert f"{model_prefix}/MLmodel" in objects, (model_prefix, sorted(objects)[:50])
    weights = [key for key, body in objects.items() if key.startswith(model_prefix) and len(body) > 10_000]
    assert weights, "the registered student's checkpoint is not in the bucket"
    assert any("/checkpoint/" in key for key in objects)  # training runs logged their checkpoints
    # reports copied by the components, each folder finished by its completion marker
    reports = [key for key in objects if key.startswith("reports/")]
    for name in ("validation/_SUCCESS.json", "validation/validation.json", "evaluation/_SUCCESS.json",
                 "evaluation/student.json", "registered.json"):
        assert any(key.endswith(name) for key in reports), (name, reports)

    # the planted secret appears nowhere: task outputs, logs, the MLflow store and server log, the bucket
    secret = run.env["AWS_SECRET_ACCESS_KEY"]
    assert secret not in run.output
    assert files_containing([run.root, run.server_dir], secret) == []
    assert [key for key, body in objects.items() if secret.encode() in body] == []
    assert not (run.folder / "mlflow.db").exists()  # the steps used the server, not a local store


def test_pipeline_with_synthetic_pretraining_fine_tunes_from_it(shared_run: SharedRun) -> None:
    """--pretrain-params: synthetic pre-training runs first, and the real trainings start from its models."""
    from mlflow import MlflowClient

    from dbdgan.checkpoint import read_model_file

    client = MlflowClient(tracking_uri=shared_run.server.uri)
    stages = {exp: {one.data.tags.get("dbdgan.stage") for one in
                    client.search_runs([client.get_experiment_by_name(exp).experiment_id])}
              for exp in ("it-pretrain", "it")}
    assert stages == {"it-pretrain": {"train_teacher", "distill_student"}, "it": {"train_teacher", "distill_student"}}
    # creation order names the pre-training tasks first (train-teacher) and the real ones second
    for key, pre, real in (("teacher", "train-teacher", "train-teacher-2"),
                           ("student", "distill-student", "distill-student-2")):
        pre_model, real_model = shared_run.task_file(pre, key), shared_run.task_file(real, key)
        assert read_model_file(real_model)["metadata"]["init_from_sha256"] == _sha(pre_model)
        assert "init_from_sha256" not in read_model_file(pre_model)["metadata"]
    # pre-training prepared synthetic data; the real run the raw folder from the bucket
    assert len(shared_run.task_file("prepare", "dataset/manifest.csv").read_text().strip().splitlines()) == 1 + 16


def _make_run(raw: Path, overlay: Path, runs: Path) -> tuple[str, str]:
    """`make train-real` with the overlay as its profile (the venv is taken as installed, no extra datasets)."""
    store = f"sqlite:///{runs}/mlflow/mlflow.db"
    _subprocess(["make", "-s", "-o", ".venv/.installed", "train-real", f"DATA={raw}", f"PROFILE={overlay}",
                 f"RUNS={runs}", "EXTRA_EVAL=", f"EXTRA=--tracking-uri {store}"], REPO)
    registered = json.loads((runs / "real" / "reports" / "registered.json").read_text())
    return _sha(runs / "real" / "data" / "prepared" / "manifest.csv"), registered["student"]["gate"]["result"]


def _subprocess(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
def test_kfp_and_make_prepare_the_same_manifest_and_decide_alike(shared_run: SharedRun, tmp_path: Path) -> None:
    """One CUHK-layout folder (in S3 for KFP, on disk for make), one tiny overlay with the gate in `register.gate`:
    both real runners complete every step, prepare the same manifest and decide alike."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=shared_run.server.uri)
    versions = {role: client.get_model_version_by_alias(f"it-{role}", "challenger") for role in ("teacher", "student")}
    manifest = shared_run.task_file("prepare-2", "dataset/manifest.csv")
    kfp_registered = yaml.safe_load(shared_run.task_file("register", "registered").read_text())
    assert versions["student"].tags["dataset_manifest_sha256"] == _sha(manifest)
    assert len(manifest.read_text().strip().splitlines()) == 1 + PAIRS
    kfp = (_sha(manifest), kfp_registered["student"]["gate"]["result"])
    # the pipeline's condition is that decision: the champion step ran because the gate promoted
    assert list(shared_run.root.glob("*/announce-champion/champion"))

    made = _make_run(shared_run.raw, shared_run.overlay, tmp_path / "runs")
    assert kfp == made == (kfp[0], "promoted")


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
def test_prepare_component_reads_raw_data_from_s3(env: dict[str, str], tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """The prepare component alone (kfp.local runs single components too) on raw data in the bucket."""
    from kfp import local

    from dbdgan.storage import upload
    from dbdgan_kfp.components.prepare import prepare

    upload(_raw_pairs(tmp_path / "raw"), f"s3://{BUCKET}/raw/tiny-cuhk")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               raise_on_error=True)
    task = prepare(params=component_params("data.source=cuhk"), data_uri=f"s3://{BUCKET}/raw/tiny-cuhk")
    dataset = task.outputs["dataset"]
    rows = (Path(dataset.path) / "manifest.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 12 and dataset.metadata["images"] == 12

    with pytest.raises(RuntimeError, match="prepare"):
        prepare(params=component_params(), data_uri=f"s3://{BUCKET}/raw/tiny-cuhk")
    assert "data.source is 'synthetic'" in capfd.readouterr().out


def _stop_when_done(root: Path, task: str, server: MlflowServer, stopped: threading.Event,
                    closed: list[bool]) -> None:
    """Stop the tracking server as soon as `task` has finished (its executor output exists); record whether
    its port was closed right after, i.e. before the next step could reach a surviving worker."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not stopped.is_set():
        if any(root.glob(f"*/{task}/executor_output.json")):
            server.stop()
            closed.append(port_closed(server.uri, timeout=0))
            stopped.set()
            return
        time.sleep(0.1)


def test_tracking_server_outage_fails_clearly_and_registers_nothing(env: dict[str, str], tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    server_dir = tmp_path / "mlflow"
    server_dir.mkdir()
    root = tmp_path / "kfp"
    stopped, closed = threading.Event(), []
    with mlflow_server(server_dir, f"s3://{BUCKET}/mlflow-outage", env) as server:
        watcher = threading.Thread(target=_stop_when_done, args=(root, "train-teacher", server, stopped, closed),
                                   daemon=True)
        watcher.start()
        start = time.monotonic()
        code = _run_local(root, server.uri, "--student-name", "outage-student",
                          "--teacher-name", "outage-teacher")
        elapsed = time.monotonic() - start
        stopped.set()
        watcher.join(timeout=5)
        logs = capfd.readouterr()

    text = logs.out + logs.err
    assert closed == [True], "the tracking server still answered after it was stopped: not an outage"
    assert code == 1, text[-5000:]
    assert "dbdgan pipeline run-local: error:" in logs.err
    assert "distill-student" in text  # the step that lost its tracking server ...
    assert server.uri.removeprefix("http://") in text  # ... names the server it could not reach
    assert elapsed < 240  # bounded retries, no hang
    assert not list(root.glob("*/register/*"))  # registration never started

    # read the server's store directly: the teacher's training run is there, but nothing was registered
    store = MlflowClient(tracking_uri=f"sqlite:///{server_dir / 'mlflow.db'}")
    assert store.search_registered_models() == []
    runs = store.search_runs([e.experiment_id for e in store.search_experiments()])
    assert {run.data.tags.get("dbdgan.stage") for run in runs} == {"train_teacher"}
    assert env["AWS_SECRET_ACCESS_KEY"] not in text


