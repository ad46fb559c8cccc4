"""`make serve MODEL=models:/dbd-student@champion` for real: MLflow's scoring server on 127.0.0.1, real HTTP.

The server starts through the README's command, with no virtual environment on PATH (as on a fresh clone).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from kfp_fixtures import free_port
from PIL import Image
from test_registry import make_workspace

from dbdgan.registration import register_models
from dbdgan.tracking import ModelNames

STARTUP_S = 120
REPO = Path(__file__).resolve().parents[1]


def post(url: str, payload: dict, timeout: float = 60) -> tuple[int, dict]:
    """A JSON request to a scoring server: its status and JSON body, errors included."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
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
    command = ["make", "--no-print-directory", "serve", f"MODEL=models:/{student}@champion", f"PORT={port}"]
    log_path = root / "serve.log"
    bin_dir = Path(sys.executable).parent
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != bin_dir)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.resolved_uri, "PATH": path, "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
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
        yield {"base": base, "tracking": tracking, "uri": f"models:/{student}@champion", "root": root}
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


def _jpeg(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    return base64.b64encode(buffer.getvalue()).decode()


def _png_map(record: dict) -> np.ndarray:
    assert record["output"] == "png"
    with Image.open(io.BytesIO(base64.b64decode(record["map"]))) as img:
        assert img.format == "PNG" and img.mode == "L"
        return np.asarray(img)


def test_served_maps_are_the_pngs_dbdgan_predict_writes(server, tmp_path):
    from dbdgan.predict import predict_paths

    image = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    encoded = _jpeg(image)
    status, body = post(f"{server['base']}/invocations", {"inputs": [encoded]})
    assert status == 200, body
    [record] = body["predictions"]
    assert (record["width"], record["height"], record["downscaled"]) == (61, 45, False)
    assert (record["photo_width"], record["photo_height"]) == (61, 45)
    served = _png_map(record)

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(base64.b64decode(encoded))
    predict_paths([photo], server["uri"], tmp_path / "out", tracking_uri=server["tracking"].resolved_uri,
                  progress=False, overlays=False)
    with Image.open(tmp_path / "out" / "photo_blur.png") as written:
        np.testing.assert_array_equal(served, np.asarray(written))

    status, body = post(f"{server['base']}/invocations", {"inputs": [encoded], "params": {"output": "uint8"}})
    assert status == 200, body
    np.testing.assert_array_equal(np.asarray(body["predictions"][0]["map"], dtype=np.uint8), served)
    status, body = post(f"{server['base']}/invocations", {"inputs": [encoded], "params": {"output": "float"}})
    assert status == 200, body
    probabilities = np.asarray(body["predictions"][0]["map"], dtype=np.float32)
    assert probabilities.shape == (45, 61) and 0.0 <= probabilities.min() <= probabilities.max() <= 1.0
    np.testing.assert_array_equal(np.floor(probabilities * 255 + 0.5).astype(np.uint8), served)


def test_arrays_frames_and_a_downscaled_copy(server):
    image = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    status, body = post(f"{server['base']}/invocations", {"inputs": image[None].tolist()})
    assert status == 200, body
    assert _png_map(body["predictions"][0]).shape == (45, 61)

    frame = {"dataframe_split": {"columns": ["image"], "data": [[_jpeg(image)]]}}
    status, body = post(f"{server['base']}/invocations", frame)
    assert status == 200, body
    assert _png_map(body["predictions"][0]).shape == (45, 61)

    big = np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    status, body = post(f"{server['base']}/invocations", {"inputs": [_jpeg(big)], "params": {"max_side": 100}})
    assert status == 200, body
    [record] = body["predictions"]
    assert _png_map(record).shape == (75, 100)
    assert (record["width"], record["height"], record["downscaled"]) == (100, 75, True)
    assert (record["photo_width"], record["photo_height"]) == (400, 300)


@pytest.mark.parametrize(("payload", "reason"), [
    ({"inputs": [base64.b64encode(b"not an image").decode()]}, "not a readable image (12 bytes): cannot identify"),
    ({"inputs": [[[1, 2]]]}, "expected an RGB image array [H,W,3], got shape (1, 1, 2)"),
    ({"inputs": ["AAAA"], "params": {"output": "jpeg"}},
     "params.output must be one of ['png', 'uint8', 'float'], got 'jpeg'"),
    ({"inputs": ["AAAA"], "params": {"max_side": -5}}, "params.max_side must be a whole number of pixels >= 0"),
])
def test_a_bad_request_is_a_400_with_our_one_line_reason(server, payload, reason):
    status, body = post(f"{server['base']}/invocations", payload)
    assert status == 400, body
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    message = body["message"]
    assert message.startswith(reason), message
    assert "\n" not in message and "Traceback" not in json.dumps(body) and "stack_trace" not in body
    assert str(REPO) not in json.dumps(body) and "site-packages" not in json.dumps(body)


def test_a_parameter_of_the_wrong_type_is_refused_without_echoing_the_request(server):
    """MLflow checks the types itself and quotes the request in its message: photos show as their length."""
    photo = _jpeg(np.zeros((20, 20, 3), dtype=np.uint8))
    status, body = post(f"{server['base']}/invocations", {"inputs": [photo * 200], "params": {"max_side": "big"}})
    assert status == 400, body
    assert "max_side" in body["message"] and photo not in body["message"] and len(body["message"]) < 1000


def test_a_request_holds_a_bounded_number_of_pixels():
    from dbdgan.serving import decode_request

    photos = [np.zeros((100, 100, 3), dtype=np.uint8)] * 3
    assert len(decode_request(photos, budget=30_000)) == 3
    with pytest.raises(ValueError, match="more than 20000 pixels together"):
        decode_request(photos, budget=20_000)
    assert [p.shape for p, _ in decode_request(photos, max_side=50, budget=10_000)] == [(50, 50, 3)] * 3


@pytest.mark.parametrize(("metadata", "legacy", "expected"), [
    ({"input_size": 48}, None, 48),  # a version registered now: the model file alone
    ({}, [40, 56], (40, 56)),  # registered before: a file without a size, its inference.json artifact
])
def test_the_pyfunc_reads_the_input_size_from_the_model_file(tmp_path, metadata, legacy, expected):
    from types import SimpleNamespace

    from dbdgan.checkpoint import save_model_file
    from dbdgan.models import create_model
    from dbdgan.serving import BlurMapModel

    artifacts = {"checkpoint": str(tmp_path / "student.pt")}
    save_model_file(artifacts["checkpoint"], "mobile_tiny", {}, create_model("mobile_tiny"), metadata)
    if legacy is not None:
        artifacts["inference"] = str(tmp_path / "inference.json")
        Path(artifacts["inference"]).write_text(json.dumps({"input_size": legacy}))
    served = BlurMapModel()
    served.load_context(SimpleNamespace(artifacts=artifacts))
    assert served.input_size == expected
    record = served.predict(None, np.zeros((1, 24, 40, 3), dtype=np.uint8), params={"output": "float"})[0]
    assert record["map"].shape == (24, 40)
