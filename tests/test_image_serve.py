"""The Kubernetes serving container (deploy/) under podman (`make image-test`): the champion answers a photo.

The container runs as the Deployment and the InferenceService declare it (their image's command and args,
env, user, read-only root with /tmp as the only writable dir, no capabilities), with host networking to an
`mlflow server` whose artifacts live in a moto S3 server on 127.0.0.1; the Secrets' and the ConfigMap's values
come in as the env the manifests map them to. It must serve `models:/dbd-student@champion`, answer a real photo
with the PNG map `dbdgan predict` writes for the same model, and a bad request with a one-line 400.

Skips when podman or the image is missing; `make image-test` (DBDGAN_REQUIRE_IMAGE=1) makes that a failure.
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
from kfp_fixtures import dummy_credentials, free_port, mlflow_server, moto_server
from PIL import Image
from test_deploy import serving_container
from test_image_run import SANDBOX, _boto_args, built_image, scratch_dirs  # noqa: F401 - built_image: a fixture
from test_registry import make_workspace
from test_serving import post

from dbdgan.registration import register_models
from dbdgan.tracking import ModelNames, Tracking

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = REPO.parent / "shared/data/cuhk-dbd/images"
BUCKET = "dbdgan-serve"
STARTUP_S = 240


def _photo(folder: Path) -> Path:
    """A real CUHK photo when the shared data is there, else a photo-sized synthetic defocus image."""
    if SHARED_PHOTOS.is_dir():
        return sorted(SHARED_PHOTOS.glob("*.jpg"))[0]
    from dbdgan.data.synthetic import generate_sample, sample_rng

    path = folder / "photo.jpg"
    path.write_bytes(generate_sample(sample_rng(0, 0), (480, 640)).encoded)
    return path


def _container_command(name: str, image: str, port: int, env: dict[str, str]) -> list[str]:
    """`podman run` of the manifests' serving container, on `port` of the host network."""
    spec = serving_container()
    args = list(spec["args"])
    args[args.index("-p") + 1], args[args.index("-h") + 1] = str(port), "127.0.0.1"
    mounts = [arg for mount in spec["volumeMounts"] for arg in ("--tmpfs", f"{mount['mountPath']}:rw,mode=1777")]
    values = {item["name"]: item["value"] for item in spec["env"] if "value" in item}
    mapped = {item["name"] for item in spec["env"] if "valueFrom" in item}
    assert set(env) <= mapped, set(env) - mapped  # only what the Secrets and the ConfigMap provide
    environment = [arg for key, value in {**values, **env}.items() for arg in ("-e", f"{key}={value}")]
    return ["podman", "run", "-d", "--name", name, *SANDBOX.run_flags(), "--network", "host", "--read-only",
            *mounts, "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *environment,
            # one thread, as the `dbdgan predict` it is compared with: the maps then match to the grey level
            "-e", "OMP_NUM_THREADS=1", "--entrypoint", spec["command"][0], image, *spec["command"][1:], *args]


def test_the_serving_container_answers_a_photo_with_predicts_map(built_image: str, tmp_path: Path,  # noqa: F811
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert "/tmp" in scratch_dirs(built_image)
    for name in ("MLFLOW_TRACKING_URI", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    credentials = dummy_credentials()
    (tmp_path / "mlflow").mkdir()
    with moto_server() as s3_endpoint:
        host_env = {**credentials, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "AWS_EC2_METADATA_DISABLED": "true",
                    "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        boto3.client("s3", endpoint_url=s3_endpoint, **_boto_args(credentials)).create_bucket(Bucket=BUCKET)
        with mlflow_server(tmp_path / "mlflow", f"s3://{BUCKET}/mlflow", host_env) as server:
            params, models, _, manifest, _ = make_workspace(tmp_path / "ws", training_run=False)
            result = register_models(params, {"student": models["student"]}, ModelNames(), tmp_path / "ws/metrics",
                                     manifest, Tracking(uri=server.uri, experiment="serve"))
            assert result["student"]["gate"]["result"] == "promoted"

            photo = _photo(tmp_path)
            out = tmp_path / "predicted"
            predicted = subprocess.run(
                [sys.executable, "-m", "dbdgan.cli", "predict", str(photo), "--model",
                 f"models:/{ModelNames().student}@champion", "--tracking-uri", server.uri, "-o", str(out),
                 "--no-overlay"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)})
            assert predicted.returncode == 0, predicted.stderr[-3000:]
            with Image.open(out / f"{photo.stem}_blur.png") as written:
                expected = np.asarray(written)

            port = free_port()
            name = f"dbdgan-serve-{uuid.uuid4().hex[:8]}"
            config = {"MLFLOW_TRACKING_URI": server.uri, "AWS_ENDPOINT_URL": s3_endpoint,
                      "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "AWS_DEFAULT_REGION": "us-east-1", **credentials}
            started = subprocess.run(_container_command(name, built_image, port, config), capture_output=True,
                                     text=True, timeout=120)
            assert started.returncode == 0, started.stderr
            base = f"http://127.0.0.1:{port}"
            try:
                _wait_until_up(base, name)
                status, body = post(f"{base}/invocations",
                                    {"inputs": [base64.b64encode(photo.read_bytes()).decode()]}, timeout=120)
                assert status == 200, body
                [record] = body["predictions"]
                assert record["output"] == "png" and not record["downscaled"]
                with Image.open(io.BytesIO(base64.b64decode(record["map"]))) as served:
                    np.testing.assert_array_equal(np.asarray(served), expected)

                status, body = post(f"{base}/invocations", {"inputs": ["bm90IGFuIGltYWdl"]}, timeout=120)
                assert status == 400 and body["message"].startswith("not a readable image (12 bytes)"), body
                assert "\n" not in body["message"] and "stack_trace" not in body
            finally:
                logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True).stdout
                subprocess.run(["podman", "rm", "-f", name], capture_output=True)
            assert credentials["AWS_SECRET_ACCESS_KEY"] not in logs


def _wait_until_up(base: str, name: str) -> None:
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        state = subprocess.run(["podman", "inspect", "--format", "{{.State.Status}}", name], capture_output=True,
                               text=True).stdout.strip()
        if state != "running" or time.monotonic() > deadline:
            logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True)
            pytest.fail(f"serving container {state} after start:\n{(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(1)
