"""The served champion under a phone photo: a 12-megapixel JPEG through `mlflow models serve`, end to end.

A model is registered as champion in a temporary sqlite store (the CUHK profile's student network, lite0_unet
at input size 384, untrained unless --model names a trained file: time and memory do not depend on the
weights) and served by `make serve`'s command (MLflow's scoring server, one worker). Each request posts one
4000x3000 JPEG (a CUHK photo scaled up, with sensor-like noise so that it compresses like a phone photo) as
base64 JSON. Per output choice: the request's wall time as the client sees it (median of --repeats, after one
warm-up request), the response size, and the server's peak resident memory (VmHWM of its processes: the peak
over the server's life, so each setting runs on a fresh server). MLflow's default 60 s request timeout is the
bound a gateway would also apply.

Usage: python benchmarks/bench_serving.py [--model FILE] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, SHARED_CUHK, add_common_args, apply_runtime_env, finish, machine_info, markdown_table
from PIL import Image

BIN = Path(sys.executable).parent
NAME = "bench-student"
PHOTO_SIZE = (4000, 3000)  # 12 megapixels, a phone's 4:3 frame
SETTINGS = (  # (label, params)
    ("png (default)", {}),
    ("png, max_side 1024", {"max_side": 1024}),
    ("uint8, max_side 1024", {"output": "uint8", "max_side": 1024}),
    ("float, max_side 512", {"output": "float", "max_side": 512}),
)


def phone_photo(folder: Path) -> Path:
    """A 4000x3000 JPEG at quality 92: a real photo's content scaled up, plus per-pixel noise."""
    photos = sorted((SHARED_CUHK / "images").glob("*.jpg")) if SHARED_CUHK.is_dir() else []
    if photos:
        with Image.open(photos[0]) as img:
            base = img.convert("RGB").resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
    else:
        rng = np.random.default_rng(0)
        base = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).resize(PHOTO_SIZE)
    noise = np.random.default_rng(1).normal(0, 6, (PHOTO_SIZE[1], PHOTO_SIZE[0], 3))
    pixels = np.clip(np.asarray(base, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    path = folder / "phone.jpg"
    Image.fromarray(pixels).save(path, quality=92)
    return path


def structured_map_bytes() -> dict[str, Any] | None:
    """Size of a 12 MP map shaped like a trained model's, as the PNG the server sends.

    The served network is untrained, so its map is not shaped like a real one; the CUHK ground truth of the
    same photo, scaled to 12 MP and softened (maps are smooth probabilities), stands in for a trained map.
    """
    from PIL import ImageFilter

    from dbdgan.data.imageio import encode_image
    from dbdgan.predict import MAP_FORMAT

    masks = sorted((SHARED_CUHK / "masks").glob("*.png")) if SHARED_CUHK.is_dir() else []
    if not masks:
        return None
    with Image.open(masks[0]) as img:
        grey = img.convert("L").resize(PHOTO_SIZE, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(12))
    start = time.perf_counter()
    png = encode_image(np.asarray(grey), **MAP_FORMAT)
    return {"mask": masks[0].name, "png_bytes": len(png), "base64_bytes": len(base64.b64encode(png)),
            "encode_s": round(time.perf_counter() - start, 3)}


def champion(folder: Path, model: Path | None) -> str:
    """Register `model` (or an untrained CUHK-profile student) as NAME@champion; returns the store's URI."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    from dbdgan.checkpoint import read_model_file, save_model_file
    from dbdgan.models import create_model
    from dbdgan.registration import _log_pyfunc

    if model is None:
        torch.manual_seed(0)
        model = folder / "student.pt"
        save_model_file(model, "lite0_unet", {}, create_model("lite0_unet"), {"input_size": 384})
    input_size = read_model_file(model)["metadata"].get("input_size")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("bench", artifact_location=(folder / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = _log_pyfunc(model, input_size, "# benchmark\n")
    version = mlflow.register_model(info.model_uri, NAME).version
    MlflowClient().set_registered_model_alias(NAME, "champion", version)
    return uri


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mb(leader: int) -> float:
    """The largest VmHWM among the server's processes (its session: make's shell, mlflow, uvicorn)."""
    peak = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != leader:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError):
            continue
    return peak / 1024


def serve(uri: str, port: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": str(threads)}
    with log.open("ab") as handle:
        return subprocess.Popen(["make", "--no-print-directory", "-C", str(ROOT), "serve",
                                 f"MODEL=models:/{NAME}@champion", f"PORT={port}"],
                                stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_up(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    sys.exit(f"server not up after 180 s:\n{log.read_text()[-3000:]}")


def request(base: str, body: bytes) -> tuple[float, int, dict[str, Any]]:
    start = time.perf_counter()
    req = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as response:
        data = response.read()
    seconds = time.perf_counter() - start
    record = json.loads(data)["predictions"][0]
    return seconds, len(data), {key: value for key, value in record.items() if key != "map"}


def measure(uri: str, payload: dict[str, Any], args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One fresh server: a small warm-up request, then --repeats requests with the 12 MP photo."""
    port = free_port()
    log = folder / "serve.log"
    proc = serve(uri, port, args.threads, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base, proc, log)
        small = io.BytesIO()
        Image.new("RGB", (64, 48), (90, 120, 30)).save(small, format="JPEG")
        request(base, json.dumps({"inputs": [base64.b64encode(small.getvalue()).decode()]}).encode())
        idle_mb = peak_rss_mb(proc.pid)
        body = json.dumps(payload).encode()
        runs = [request(base, body) for _ in range(args.repeats)]
        return {"seconds": [round(r[0], 3) for r in runs], "median_s": statistics.median(r[0] for r in runs),
                "response_bytes": runs[0][1], "record": runs[0][2], "peak_rss_mb_after_load": round(idle_mb, 1),
                "peak_rss_mb": round(peak_rss_mb(proc.pid), 1), "request_bytes": len(body)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a trained model file (default: an untrained lite0_unet)")
    parser.add_argument("--repeats", type=int, default=3)
    add_common_args(parser, "serving")
    args = parser.parse_args()
    apply_runtime_env(args.allocator, args.omp_wait_policy)
    args.threads = args.threads or 2
    machine = machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        folder = Path(tmp)
        photo = phone_photo(folder)
        jpeg_bytes = photo.stat().st_size
        uri = champion(folder, args.model)
        encoded = base64.b64encode(photo.read_bytes()).decode()
        for label, params in SETTINGS:
            payload = {"inputs": [encoded], **({"params": params} if params else {})}
            result = measure(uri, payload, args, folder)
            rows.append({"setting": label, "params": params, **result})
            print(f"{label}: {result['median_s']:.2f} s, {result['response_bytes'] / 1e6:.2f} MB, "
                  f"peak {result['peak_rss_mb']:.0f} MB", flush=True)
    structured = structured_map_bytes()
    report = {"machine": machine, "photo": {"size": list(PHOTO_SIZE), "jpeg_bytes": jpeg_bytes,
                                            "source": "CUHK photo scaled up + noise" if SHARED_CUHK.is_dir()
                                            else "noise scaled up"},
              "model": str(args.model or "lite0_unet, untrained, input size 384"), "threads": args.threads,
              "repeats": args.repeats, "rows": rows, "structured_map": structured}
    columns = [("setting", "setting", ""), ("median_s", "request (s, median)", ".2f"),
               ("response_mb", "response (MB)", ".2f"), ("map", "map size", ""),
               ("peak_rss_mb_after_load", "server RSS after load (MB)", ".0f"),
               ("peak_rss_mb", "server peak RSS (MB)", ".0f")]
    table_rows = [{**row, "response_mb": row["response_bytes"] / 1e6,
                   "map": f"{row['record']['width']}x{row['record']['height']}"} for row in rows]
    intro = (f"One {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG ({jpeg_bytes / 1e6:.1f} MB, "
             f"{rows[0]['request_bytes'] / 1e6:.1f} MB as base64 JSON) per request to `make serve` "
             f"({report['model']}, {args.threads} threads, one worker); {args.repeats} requests per row after a "
             "warm-up, each row on a fresh server.")
    sections = [intro, markdown_table(columns, table_rows)]
    if structured:
        sections.append(f"The served network is untrained; a map shaped like a trained model's (the CUHK ground "
                        f"truth {structured['mask']}, scaled to 12 MP and softened) is "
                        f"{structured['png_bytes'] / 1e6:.2f} MB as PNG, "
                        f"{structured['base64_bytes'] / 1e6:.2f} MB in the response, encoded in "
                        f"{structured['encode_s']:.2f} s.")
    finish("serving", report, sections, args.out_dir)


if __name__ == "__main__":
    main()
