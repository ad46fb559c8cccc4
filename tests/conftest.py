"""Shared test fixtures: the real CUHK folder (or a clear skip) and a local S3 endpoint (moto server)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from kfp_fixtures import port_closed, stop_group

SHARED_CUHK = Path(__file__).resolve().parents[2] / "shared" / "data" / "cuhk-dbd"
SHARED_SZU = SHARED_CUHK.with_name("szu-bd-sample")


@pytest.fixture(scope="session")
def shared_cuhk() -> Path:
    """The 604-pair CUHK folder from ../shared (or $DBDGAN_SHARED_DATA); skips when it is absent."""
    override = os.environ.get("DBDGAN_SHARED_DATA")
    candidates = [Path(override), Path(override) / "cuhk-dbd"] if override else [SHARED_CUHK]
    for path in candidates:
        if (path / "images").is_dir() and (path / "masks").is_dir():
            return path
    pytest.skip(
        f"real CUHK data not found at {' or '.join(map(str, candidates))} "
        "(set DBDGAN_SHARED_DATA to the cuhk-dbd folder to run this test)"
    )


@pytest.fixture(scope="session")
def shared_szu() -> Path:
    """The 50-photo SZU-BD sample (release layout) from ../shared, or beside $DBDGAN_SHARED_DATA's cuhk-dbd;
    skips when it is absent."""
    override = os.environ.get("DBDGAN_SHARED_DATA")
    candidates = ([Path(override) / "szu-bd-sample", Path(override).with_name("szu-bd-sample")] if override
                  else [SHARED_SZU])
    for path in candidates:
        if (path / "img" / "out-of-focus").is_dir() and (path / "gt").is_dir():
            return path
    pytest.skip(
        f"real SZU-BD sample not found at {' or '.join(map(str, candidates))} "
        "(set DBDGAN_SHARED_DATA to the folder holding szu-bd-sample to run this test)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def _moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server process on a free 127.0.0.1 port for the whole session."""
    moto = Path(sys.executable).with_name("moto_server")
    if not moto.exists():
        pytest.skip(f"moto_server not installed beside {sys.executable} (pip install 'moto[server]')")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with log.open("wb") as log_handle:
        proc = subprocess.Popen(  # its own process group: stopping it stops everything it started
            [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log_handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer means the server is up
            except (urllib.error.URLError, ConnectionError) as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}: {log.read_text()}") from exc
                time.sleep(0.1)
        yield endpoint
    finally:
        stop_group(proc)
        assert port_closed(endpoint), f"moto_server still answers on {endpoint} after its group was stopped"


@pytest.fixture
def s3_server(_moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Endpoint URL of the local S3 server, with throwaway AWS_* credentials set for boto3, DVC and MLflow.

    Buckets persist for the session: give each test its own bucket name.
    """
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", f"test-{secrets.token_hex(4)}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets.token_hex(16))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", _moto_endpoint)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", _moto_endpoint)
    # Never pick up a developer's real profile or config.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return _moto_endpoint


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    """Seeded, single-threaded: tiny tensors gain nothing from threads and a shared CPU makes them thrash."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
