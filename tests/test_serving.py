"""`mlflow models serve -m models:/dbd-student@champion` for real: a subprocess on 127.0.0.1, real HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_registry import make_workspace

from dbdgan.registry import register_models
from dbdgan.tracking import ModelNames

STARTUP_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        params, models, _, manifest, tracking = make_workspace(root, training_run=False)
        student = ModelNames().student
        result = register_models(params, {"student": models["student"]}, ModelNames(), root / "metrics", manifest,
                                 tracking)
    assert result["student"]["gate"]["result"] == "promoted"
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli) if mlflow_cli.exists() else "mlflow", "models", "serve",
               "-m", f"models:/{student}@champion", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
    log_path = root / "serve.log"
    bin_dir = str(Path(sys.executable).parent)  # the server execs uvicorn from the same environment
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.resolved_uri,
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text()[-3000:]
                pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not up after {STARTUP_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """End the server and its workers: the process group it leads (start_new_session above)."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def test_served_model_returns_blur_maps_for_encoded_images_and_arrays(server):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    encoded = base64.b64encode(buffer.getvalue()).decode()

    status, body = post(f"{server}/invocations", {"inputs": [encoded]})
    assert status == 200, body
    maps = np.asarray(body["predictions"], dtype=np.float32)
    assert maps.shape == (1, 45, 61)
    assert maps.min() >= 0.0 and maps.max() <= 1.0 and np.isfinite(maps).all()

    status, body = post(f"{server}/invocations", {"inputs": image[None].tolist()})
    assert status == 200, body
    assert np.asarray(body["predictions"]).shape == (1, 45, 61)

    frame = {"dataframe_split": {"columns": ["image"], "data": [[encoded]]}}
    status, body = post(f"{server}/invocations", frame)
    assert status == 200, body
    assert np.asarray(body["predictions"]).shape == (1, 45, 61)

    status, body = post(f"{server}/invocations", {"inputs": [base64.b64encode(b"not an image").decode()]})
    assert status >= 400 and "not a readable image" in json.dumps(body)
