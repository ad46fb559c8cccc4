"""The KFP pipeline end to end with kfp.local against real services on 127.0.0.1, started here.

Services: a moto S3 server (ThreadedMotoServer) and an `mlflow server` process (sqlite store in tmp,
artifacts proxied to s3://<bucket>/mlflow on moto). The pipeline runs through `dbdgan pipeline run-local`
(SubprocessRunner: every step is a subprocess of this venv) on a tiny config. A recognisable secret is planted
as AWS_SECRET_ACCESS_KEY and searched for in every output afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from kfp_fixtures import (
    TINY,
    MlflowServer,
    component_params,
    dummy_credentials,
    files_containing,
    mlflow_server,
    moto_server,
    port_closed,
)

from dbdgan_kfp.pipelines import cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUCKET = "dbdgan-it"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Credentials (with the planted secret) and endpoints, inherited by every step's subprocess."""
    values = {
        **dummy_credentials(),
        "DBDGAN_S3_ENDPOINT_URL": s3_endpoint, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        # bounded client retries, so that an outage fails within seconds here
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "DBDGAN_S3_MAX_ATTEMPTS": "2",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background job workers: faster start, clean stop
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in ("MLFLOW_TRACKING_URI", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    monkeypatch.chdir(tmp_path)  # nothing a step writes may land in the working tree
    return values


def _run_local(root: Path, mlflow_uri: str, *extra: str) -> int:
    args = ["run-local", "--params", str(REPO / "params.yaml"), "--pipeline-root", str(root),
            "--mlflow-uri", mlflow_uri, "--reports-uri", f"s3://{BUCKET}/reports"]
    for override in TINY:
        args += ["--set", override]
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


def test_pipeline_registers_the_student_and_leaks_no_secret(
        env: dict[str, str], s3_endpoint: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    server_dir = tmp_path / "mlflow"
    server_dir.mkdir()
    root = tmp_path / "kfp"
    with mlflow_server(server_dir, f"s3://{BUCKET}/mlflow", env) as server:
        start = time.monotonic()
        code = _run_local(root, server.uri, "--student-name", "it-student", "--teacher-name", "it-teacher",
                          "--mlflow-experiment", "it")
        logs = capfd.readouterr()
        assert code == 0, logs.out[-5000:] + logs.err[-5000:]
        elapsed = time.monotonic() - start

        client = MlflowClient(tracking_uri=server.uri)
        student = client.get_model_version_by_alias("it-student", "challenger")
        teacher = client.get_model_version_by_alias("it-teacher", "challenger")
        assert student.version == "1" and teacher.version == "1"
        assert student.tags["role"] == "student" and "metric.max_f" in student.tags
        runs = client.search_runs([client.get_experiment_by_name("it").experiment_id])
        run_params = {k: v for run in runs for k, v in run.data.params.items()}
        assert run_params.get("model.student") == "mobile_tiny"  # the overrides reached the steps
        for run in runs:  # the evaluate step attached its scores and plots to both training runs
            attached = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
            role = run.data.tags["dbdgan.stage"].split("_")[-1]
            assert {f"evaluation/{role}.json", "evaluation/curves.png"} <= attached, (role, attached)
        model_prefix = _bucket_prefix(client, student.source)

    # the student's MLflow artifacts live in the bucket (proxied by the server to s3://BUCKET/mlflow)
    objects = _bucket_objects(s3_endpoint)
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
    secret = env["AWS_SECRET_ACCESS_KEY"]
    assert secret not in logs.out + logs.err
    assert files_containing([root, server_dir], secret) == []
    assert [key for key, body in objects.items() if secret.encode() in body] == []
    assert not (tmp_path / "mlflow.db").exists()  # the steps used the server, not a local store
    print(f"pipeline run took {elapsed:.0f} s")


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


def test_pipeline_with_synthetic_pretraining_fine_tunes_from_it(env: dict[str, str], tmp_path: Path,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    """--pretrain-params: synthetic pre-training runs first, and the real trainings start from its models."""
    import hashlib

    import yaml
    from mlflow import MlflowClient

    from dbdgan.checkpoint import read_model_file

    pretrain: dict[str, Any] = {}
    for override in [*TINY, "data.synthetic.num_images=16", "seed=1"]:
        key, _, value = override.partition("=")
        *parents, leaf = key.split(".")
        node = pretrain
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    pretrain_file = tmp_path / "pretrain.yaml"
    pretrain_file.write_text(yaml.safe_dump(pretrain))

    server_dir = tmp_path / "mlflow"
    server_dir.mkdir()
    root = tmp_path / "kfp"
    with mlflow_server(server_dir, f"s3://{BUCKET}/mlflow-pretrain", env) as server:
        code = _run_local(root, server.uri, "--pretrain-params", str(REPO / "params.yaml"),
                          "--pretrain-params", str(pretrain_file), "--student-name", "pt-student",
                          "--teacher-name", "pt-teacher", "--mlflow-experiment", "it-real",
                          "--pretrain-experiment", "it-pretrain")
        logs = capfd.readouterr()
        assert code == 0, logs.out[-5000:] + logs.err[-5000:]
        client = MlflowClient(tracking_uri=server.uri)
        assert client.get_model_version_by_alias("pt-student", "challenger").version == "1"
        stages = {exp: {run.data.tags.get("dbdgan.stage") for run in
                        client.search_runs([client.get_experiment_by_name(exp).experiment_id])}
                  for exp in ("it-pretrain", "it-real")}
    assert stages == {"it-pretrain": {"train_teacher", "distill_student"},
                      "it-real": {"train_teacher", "distill_student"}}

    def model(task: str, key: str) -> Path:
        (path,) = root.glob(f"*/{task}/{key}")
        return path

    # creation order names the pre-training tasks first (train-teacher) and the real ones second
    for key, pre, real in (("teacher", "train-teacher", "train-teacher-2"),
                           ("student", "distill-student", "distill-student-2")):
        pre_sha = hashlib.sha256(model(pre, key).read_bytes()).hexdigest()
        assert read_model_file(model(real, key))["metadata"]["init_from_sha256"] == pre_sha
        assert "init_from_sha256" not in read_model_file(model(pre, key))["metadata"]
    assert len(list(root.glob("*/prepare-2/dataset/manifest.csv"))) == 1


def _tree(overrides: list[str]) -> dict[str, Any]:
    """Dotted overrides as a nested params overlay."""
    import yaml

    tree: dict[str, Any] = {}
    for override in overrides:
        key, _, value = override.partition("=")
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    return tree


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _subprocess(args: list[str], cwd: Path) -> str:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _dvc_run(raw: Path, overlay: Path, workspace: Path) -> tuple[str, str]:
    """`dvc repro` of the repository's dvc.yaml in a fresh repo whose params.yaml and inputs.yaml point at
    `raw`; returns the prepared manifest's sha256 and the gate's decision."""
    import json
    import shutil
    import sys

    import yaml

    from dbdgan.config import load_params

    workspace.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, workspace / name)
    (workspace / "src").symlink_to(REPO / "src", target_is_directory=True)
    (workspace / "scripts").symlink_to(REPO / "scripts", target_is_directory=True)  # inputs.yaml's cli
    (workspace / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)  # the python it runs
    params = load_params([REPO / "params.yaml", overlay]).model_dump(mode="json")
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    inputs = yaml.safe_load((REPO / "inputs.yaml").read_text())
    (workspace / "inputs.yaml").write_text(yaml.safe_dump({**inputs, "raw_data": str(raw)}))
    dvc = str(Path(sys.executable).with_name("dvc"))
    _subprocess(["git", "init", "-q"], workspace)
    _subprocess([dvc, "init", "-q"], workspace)
    _subprocess([dvc, "repro"], workspace)
    registered = json.loads((workspace / "reports" / "registered.json").read_text())
    return _sha(workspace / "data" / "prepared" / "manifest.csv"), registered["student"]["gate"]["result"]


def _make_run(raw: Path, overlay: Path, runs: Path) -> tuple[str, str]:
    """`make train-real` with the overlay as its profile (the venv is taken as installed)."""
    import json

    store = f"sqlite:///{runs}/mlflow/mlflow.db"
    _subprocess(["make", "-s", "-o", ".venv/.installed", "train-real", f"DATA={raw}", f"PROFILE={overlay}",
                 f"RUNS={runs}", f"EXTRA=--tracking-uri {store}"], REPO)
    registered = json.loads((runs / "real" / "reports" / "registered.json").read_text())
    return _sha(runs / "real" / "data" / "prepared" / "manifest.csv"), registered["student"]["gate"]["result"]


GATES = {"promoted": ["register.gate.min_max_f=0.0", "register.gate.max_mae=1.0"],
         "rejected": ["register.gate.min_max_f=1.0"]}  # no tiny model reaches max-F 1: the student must fail


@pytest.mark.parametrize("decision", sorted(GATES))
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
def test_kfp_dvc_and_make_run_the_same_steps_on_a_real_layout_dataset(
        decision: str, env: dict[str, str], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """One CUHK-layout folder (in S3 for KFP, on disk for DVC and make), one tiny overlay with the gate in
    `register.gate`: all three runners complete every step, prepare the same manifest and decide alike."""
    import yaml
    from mlflow import MlflowClient

    from dbdgan.storage import upload

    raw = _raw_pairs(tmp_path / "raw", count=24)
    upload(raw, f"s3://{BUCKET}/raw/{decision}")
    overrides = [*TINY, "data.source=cuhk", *GATES[decision]]
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(yaml.safe_dump(_tree(overrides)))

    server_dir, root = tmp_path / "mlflow", tmp_path / "kfp"
    server_dir.mkdir()
    with mlflow_server(server_dir, f"s3://{BUCKET}/mlflow-{decision}", env) as server:
        extra = [arg for override in ["data.source=cuhk", *GATES[decision]] for arg in ("--set", override)]
        code = _run_local(root, server.uri, "--data-uri", f"s3://{BUCKET}/raw/{decision}", *extra,
                          "--student-name", f"real-student-{decision}", "--teacher-name", f"real-teacher-{decision}")
        logs = capfd.readouterr()
        assert code == 0, logs.out[-5000:] + logs.err[-5000:]
        client = MlflowClient(tracking_uri=server.uri)
        versions = {role: client.get_model_version_by_alias(f"real-{role}-{decision}", "challenger")
                    for role in ("teacher", "student")}
    (manifest,) = root.glob("*/prepare/dataset/manifest.csv")
    (registered,) = root.glob("*/register/registered")
    kfp_registered = yaml.safe_load(registered.read_text())
    assert {role: v.version for role, v in versions.items()} == {"teacher": "1", "student": "1"}
    assert versions["student"].tags["dataset_manifest_sha256"] == _sha(manifest)
    assert len(manifest.read_text().strip().splitlines()) == 1 + 24
    kfp = (_sha(manifest), kfp_registered["student"]["gate"]["result"])
    # the pipeline's condition is that decision: the champion step ran exactly when the gate promoted
    assert bool(list(root.glob("*/announce-champion/champion"))) == (decision == "promoted")

    dvc = _dvc_run(raw, overlay, tmp_path / "dvc")
    made = _make_run(raw, overlay, tmp_path / "runs")
    assert kfp == dvc == made == (kfp[0], decision)
