"""Shared test fixtures: the real CUHK folder (or a clear skip) and the suite's one local S3 endpoint (moto)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from kfp_fixtures import moto_server, port_closed

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


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The suite's one S3 server (kfp_fixtures.moto_server, on a free 127.0.0.1 port) for the whole session.

    Buckets persist for the session: give each test its own bucket name."""
    pytest.importorskip("moto.server", reason="moto's server is not installed (pip install 'moto[server]')")
    with moto_server() as endpoint:
        yield endpoint
    assert port_closed(endpoint), f"moto server still answers on {endpoint} after it was stopped"


@pytest.fixture
def s3_server(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Endpoint URL of the local S3 server, with throwaway AWS_* credentials set for boto3, DVC and MLflow.

    Buckets persist for the session: give each test its own bucket name.
    """
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", f"test-{secrets.token_hex(4)}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets.token_hex(16))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", moto_endpoint)
    # Never pick up a developer's real profile or config.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return moto_endpoint


# Fixtures that start a local server: a test using one is a `server` test, which `make test-fast` skips
SERVER_FIXTURES = frozenset({"moto_endpoint", "s3_server", "server"})  # server: test_serving's `dbdgan serve`


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    """Seeded, single-threaded: tiny tensors gain nothing from threads and a shared CPU makes them thrash."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
