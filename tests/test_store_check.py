"""A registry URI read with no store behind it: one line naming the store and the way to point at another;
nothing is created (the real `dbdgan` command in a folder that is not the repository)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kfp_fixtures import free_port
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
HINT = "--tracking-uri URI or the MLFLOW_TRACKING_URI environment variable"


def _dbdgan(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "dbdgan.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture()
def elsewhere(tmp_path: Path) -> Path:
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    return tmp_path


@pytest.mark.parametrize("command", [
    ["predict", "photo.png", "--model", "models:/dbd-student@champion", "-o", "maps"],
    ["export-onnx", "--model", "models:/dbd-student@champion", "--out", "s.onnx"],
    ["model-info", "--model", "models:/dbd-student/1"],
    ["promote", "--version", "1", "--reason", "try", "--params", str(REPO / "params.yaml")],
])
def test_a_missing_local_store_is_one_line_and_nothing_is_created(elsewhere, command):
    proc = _dbdgan(command, elsewhere)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "no MLflow store at sqlite:///mlflow/mlflow.db" in lines[0] and HINT in lines[0]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["photo.png"]  # no ./mlflow/mlflow.db, no maps


def test_an_unreachable_server_is_one_line_naming_it(elsewhere):
    uri = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    proc = _dbdgan(["predict", "photo.png", "--model", "models:/dbd-student@champion", "-o", "maps",
                    "--tracking-uri", uri, "--set", "register.service_timeout_s=2"], elsewhere)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and uri in lines[0] and HINT in lines[0], proc.stderr
