"""Issue 25, the nine faults a hostile user still found: each reproduced here as the user met it.

Real parts only: `mlflow server` processes, sqlite stores, `dbdgan` subprocesses, `dvc repro`, a real full file
system (a 64 KiB tmpfs in a private mount namespace), real symbolic links and worker processes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from kfp_fixtures import mlflow_server
from PIL import Image
from test_faults_cli import _register_args, dbdgan
from test_faults_registry import workspace

from dbdgan.checkpoint import save_model_file
from dbdgan.config import load_params
from dbdgan.models import create_model
from dbdgan.redact import redact, redact_tree
from dbdgan.tracking import Tracking, stage_run

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _one_line(run: subprocess.CompletedProcess[str], command: str) -> str:
    """The error on stderr, which must be exactly one `dbdgan <command>:` line (beside timestamped log lines)."""
    lines = [line for line in run.stderr.strip().splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith(f"dbdgan {command}: ") and "Traceback" not in run.stderr
    return lines[0]


def _student(path: Path) -> Path:
    torch.manual_seed(0)
    save_model_file(path, "mobile_tiny", {}, create_model("mobile_tiny"), {"input_size": 48})
    return path


def _photo(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    width, height = size
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# --- 1. the tracking password in MLflow's own output ----------------------------------------------------------

def test_mlflow_never_prints_the_tracking_password(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)  # restored after the test
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    password = "S3cretPw"
    with mlflow_server(tmp_path, str(tmp_path / "artifacts"), {}) as server:
        uri = server.uri.replace("http://", f"http://alice:{password}@")
        tracking = Tracking(uri=uri, experiment="masked")
        with stage_run(load_params(REPO / "params.yaml"), "train_teacher", tracking) as run:
            assert run.info.run_id
            logging.getLogger("mlflow.tracking.fluent").warning("talking to %s", uri)  # through MLflow's handler
        out, err = capfd.readouterr()
    assert password not in out + err, (out + err)[-3000:]
    assert "talking to http://***@127.0.0.1" in err


# --- 2. token-only credentials ----------------------------------------------------------------------------------

def test_credentials_without_a_password_are_masked_everywhere(tmp_path: Path) -> None:
    assert redact("http://S3cretTok@127.0.0.1:1/api") == "http://***@127.0.0.1:1/api"
    assert redact("weights s3://AKIAS3cretKEY@bucket/w.pt") == "weights s3://***@bucket/w.pt"
    kept = "s3://bucket/key@v1 models:/dbd-student@champion"
    assert redact(kept) == kept
    assert redact_tree({"a": ["ftp://tok@host/x"]}) == {"a": ["ftp://***@host/x"]}

    ws = workspace(tmp_path)
    for verbose in ([], ["-v"]):
        run = dbdgan(*verbose, *_register_args(ws, "http://S3cretTok@127.0.0.1:1"), cwd=tmp_path)
        assert run.returncode == 1 and "S3cretTok" not in run.stdout + run.stderr, run.stderr[-3000:]
        assert "http://***@127.0.0.1:1" in run.stderr

    params = tmp_path / "params.yaml"
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    tree["model"]["teacher_pretrained"] = "s3://AKIAS3cretKEY@bucket/w.pt"
    params.write_text(yaml.safe_dump(tree))
    package = tmp_path / "pipeline.yaml"
    run = subprocess.run([str(BIN / "dbdgan"), "pipeline", "compile", "--local", "--params", str(params),
                          "--out", str(package)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "AKIAS3cretKEY" not in run.stdout + run.stderr + package.read_text()
    assert "s3://***@bucket/w.pt" in package.read_text()


# --- 3. one photo whose output cannot be written ------------------------------------------------------------

def test_a_photo_whose_overlay_cannot_be_encoded_is_that_photos_error(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for stem in ("a", "c"):
        _photo(photos / f"{stem}.jpg")
    Image.new("RGB", (70000, 40), (90, 120, 30)).save(photos / "b_wide.png")  # 2.8 MP; JPEG stops at 65500
    out = tmp_path / "out"
    run = dbdgan("predict", str(photos), "--model", str(_student(tmp_path / "s.pt")), "-o", str(out), cwd=tmp_path)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert "1 of 3 inputs failed" in last and "b_wide.png" in last and "overlay" in last, run.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["a_blur.png", "a_overlay.jpg", "c_blur.png", "c_overlay.jpg"]


# --- 4. two registrations on a fresh sqlite store ---------------------------------------------------------------

def test_two_registrations_at_once_on_a_new_sqlite_store_both_succeed(tmp_path: Path) -> None:
    store = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{store}"
    spaces = [workspace(tmp_path / name, seed=seed, store=store) for seed, name in enumerate(("a", "b"))]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "dbdgan.cli", *_register_args(ws, uri)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for ws in spaces]
    results = [(proc.wait(timeout=300), proc.stderr.read()) for proc in procs]
    assert [code for code, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    from mlflow import MlflowClient

    versions = MlflowClient(tracking_uri=uri).search_model_versions("name='dbd-student'")
    assert len(versions) == 2


# --- 5. evaluate.onnx: false under dvc repro ---------------------------------------------------------------------

def test_dvc_repro_of_evaluate_without_onnx(tmp_path: Path) -> None:
    root = tmp_path / "run"
    overrides = ["evaluate.onnx=false", "evaluate.int8=false", "evaluate.log_to_mlflow=false",
                 "evaluate.efficiency_size=32", "evaluate.efficiency_runs=1", "evaluate.grid_samples=2",
                 "evaluate.thresholds=16", "data.synthetic.num_images=24", "data.synthetic.size=48"]
    sets = [arg for item in overrides for arg in ("--set", item)]
    made = subprocess.run([str(BIN / "dbdgan"), "steps", "--dvc", "--root", str(root), "--params",
                           str(REPO / "params.yaml"), *sets], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-3000:]
    stage = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["evaluate"]
    assert "metrics/onnx" in stage["outs"]  # declared whatever the params say
    prepared = subprocess.run([str(BIN / "dbdgan"), "prepare", "--params", str(root / "params.yaml"),
                               "--out", str(root / "data/prepared")], capture_output=True, text=True, timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    torch.manual_seed(0)
    for role, arch in (("teacher", "teacher_tiny"), ("student", "mobile_tiny")):
        save_model_file(root / "models" / f"{role}.pt", arch, {}, create_model(arch), {"input_size": 48})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    init = subprocess.run([str(BIN / "dvc"), "init", "-q", "--no-scm"], cwd=root, env=env, capture_output=True,
                          text=True)
    assert init.returncode == 0, init.stderr
    repro = subprocess.run([str(BIN / "dvc"), "repro", "--single-item", "evaluate"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=600)
    assert repro.returncode == 0, (repro.stdout + repro.stderr)[-4000:]
    assert (root / "metrics/onnx").is_dir() and not any((root / "metrics/onnx").iterdir())
    assert (root / "metrics/student.json").is_file()


# --- 6. kill -9 of prepare ---------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_prepare_takes_its_workers_with_it(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "dbdgan.cli", "prepare", "--params", str(REPO / "params.yaml"),
               "--set", "data.synthetic.num_images=3000", "--set", "data.synthetic.size=128",
               "--out", str(tmp_path / "prepared")]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            workers = _children(proc.pid)
        assert len(workers) >= 2, "prepare started no worker processes"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their parent"
    finally:
        proc.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- 7. invalid params that passed the schema ---------------------------------------------------------------

@pytest.mark.parametrize(("override", "key"), [
    ("seed=-1", "seed"),
    ("train_teacher.optim.betas=[2, 2]", "train_teacher.optim.betas"),
    ("model.teacher=nonexistent", "model.teacher"),
    ("model.teacher_kwargs={widht: 8}", "model.teacher_kwargs"),
    ("model.student_kwargs={nope: 1}", "model.student_kwargs"),
])
def test_invalid_params_fail_at_load_with_exit_2_naming_the_key(tmp_path: Path, override: str, key: str) -> None:
    run = dbdgan("train-teacher", "--params", str(REPO / "params.yaml"), "--set", override,
                 "--data", str(tmp_path / "no-such-data"), cwd=tmp_path)
    assert run.returncode == 2
    line = _one_line(run, "train-teacher")
    assert f" {key}: " in line and "no-such-data" not in line, line


# --- 8. one-line errors -------------------------------------------------------------------------------------------

def test_schema_errors_are_one_line(tmp_path: Path) -> None:
    run = dbdgan("steps", "--params", str(REPO / "params.yaml"), "--set", "seed=abc",
                 "--set", "train_teacher.epochs=0", cwd=tmp_path)
    assert run.returncode == 2
    line = _one_line(run, "steps")
    assert "seed:" in line and "train_teacher.epochs:" in line


class _Payload:
    def __reduce__(self) -> tuple:
        return (os.system, ("true",))


def test_refused_and_malformed_model_files_are_one_line(tmp_path: Path) -> None:
    untrusted = tmp_path / "untrusted.pt"
    torch.save({"arch": _Payload(), "arch_kwargs": {}, "state_dict": {}}, untrusted)
    listed = tmp_path / "listed.pt"
    torch.save({"arch": "mobile_tiny", "arch_kwargs": [], "state_dict": {}}, listed)
    for path, expected in ((untrusted, "refusing to load model file"), (listed, "'arch_kwargs' is a list")):
        run = dbdgan("model-info", "--model", str(path), cwd=tmp_path)
        assert run.returncode == 1
        line = _one_line(run, "model-info")
        assert expected in line and str(path) in line, line


def test_a_full_disk_is_one_line_naming_the_file(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private tmpfs")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode().strip()}")
    out = tmp_path / "full"
    out.mkdir()
    photo = _photo(tmp_path / "big.png", (512, 512))  # its map and overlay need more than 64 KiB
    script = (f"mount -t tmpfs -o size=64k tmpfs {out} && exec {sys.executable} -m dbdgan.cli predict {photo} "
              f"--model {_student(tmp_path / 's.pt')} -o {out}")
    run = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300, env={"PATH": "/usr/bin:/bin:/sbin:/usr/sbin", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 1, run.stderr[-3000:]
    line = _one_line(run, "predict")
    assert "No space left on device" in line and str(out / "big_") in line, line


# --- 9. a symbolic link loop in a predict folder ---------------------------------------------------------------

def test_a_symlink_loop_is_reported_as_an_unreadable_input(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "ok.jpg")
    (photos / "loop.jpg").symlink_to("loop.jpg")
    out = tmp_path / "out"
    run = dbdgan("predict", str(photos), "--model", str(_student(tmp_path / "s.pt")), "-o", str(out), cwd=tmp_path)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert "1 of 2 inputs failed" in last and "loop.jpg: unreadable: Too many levels of symbolic links" in last, last
    assert (out / "ok_blur.png").is_file()
