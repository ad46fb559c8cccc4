"""Issue 13, the command line: every failure is one clear line and a non-zero exit (the traceback with -v),
waits on an unreachable tracking server end within register.service_timeout_s, and a password in a URI is
never printed, logged or stored."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from kfp_fixtures import free_port, port_closed
from test_faults_registry import workspace

from dbdgan.redact import RedactingFormatter, redact, redact_tree
from dbdgan.tracking import flatten, retry_settings

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "PLANTEDpw42"


def dbdgan(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dbdgan.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def _register_args(ws: dict, uri: str) -> list[str]:
    return ["register", "--params", str(REPO / "params.yaml"), "--set", "register.service_timeout_s=5",
            "--data", str(ws["manifest"].parent), "--teacher", str(ws["models"]["teacher"]),
            "--student", str(ws["models"]["student"]), "--scores", str(ws["metrics_dir"]),
            "--out", str(ws["manifest"].parent / "registered.json"), "--tracking-uri", uri]


def test_an_unreachable_tracking_server_is_one_redacted_line_within_the_timeout(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    port = free_port()
    uri = f"http://ops:{PASSWORD}@127.0.0.1:{port}"
    assert port_closed(uri, timeout=0)  # the server is down before the command runs
    start = time.monotonic()
    quiet = dbdgan(*_register_args(ws, uri), cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert quiet.returncode == 1
    lines = quiet.stderr.strip().splitlines()
    assert lines[-1].startswith("dbdgan register: error: MlflowException:"), quiet.stderr[-3000:]
    assert "Traceback" not in quiet.stderr
    assert elapsed < 60  # 5 s of retries (plus start-up), not MLflow's default of about 4 minutes
    verbose = dbdgan("-v", *_register_args(ws, uri), cwd=tmp_path)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    for run in (quiet, verbose):
        assert PASSWORD not in run.stdout + run.stderr
    assert not (tmp_path / "registered.json").exists()


def test_an_output_that_is_a_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    from test_faults_data import _pairs

    raw = _pairs(tmp_path / "raw", ["0", "1", "2"])
    (tmp_path / "taken").write_text("x")
    prepared = tmp_path / "prepared"
    ok = dbdgan("prepare", "--params", str(REPO / "params.yaml"), "--set", "data.source=cuhk", "--input", str(raw),
                "--out", str(prepared), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    for command in (["prepare", "--set", "data.source=cuhk", "--input", str(raw), "--out", str(tmp_path / "taken")],
                    ["validate", "--data", str(prepared), "--out", str(tmp_path / "taken")],
                    ["predict", str(raw / "images"), "--model", str(workspace(tmp_path / "ws")["models"]["student"]),
                     "-o", str(tmp_path / "taken")]):
        run = dbdgan(command[0], "--params", str(REPO / "params.yaml"), *command[1:], cwd=tmp_path)
        assert run.returncode != 0, command
        assert "Traceback" not in run.stderr, run.stderr[-3000:]
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith(f"dbdgan {command[0]}: error:") and "taken" in last, run.stderr


def test_uri_passwords_are_redacted_in_params_logs_and_trees(caplog) -> None:
    uri = f"http://ops:{PASSWORD}@mlflow.internal:5000"
    assert redact(uri) == "http://***@mlflow.internal:5000"
    assert redact("s3://bucket/key@v1 and http://host:5000/x") == "s3://bucket/key@v1 and http://host:5000/x"
    assert PASSWORD not in str(flatten({"register": {"tracking_uri": uri}}))
    assert redact_tree({"a": [uri, 3], "b": {"c": uri}}) == {"a": ["http://***@mlflow.internal:5000", 3],
                                                            "b": {"c": "http://***@mlflow.internal:5000"}}
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "talking to %s", (uri,), None)
    assert PASSWORD not in RedactingFormatter("%(message)s").format(record)


def test_retry_settings_fit_the_budget() -> None:
    settings = retry_settings(60)
    retries = int(settings["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    assert 2 ** retries - 2 + retries <= 60 < 2 ** (retries + 1) - 2 + retries + 1
    assert settings["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"
