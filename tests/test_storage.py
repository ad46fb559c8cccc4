"""dbdgan.storage against a real S3 HTTP endpoint (moto's server on 127.0.0.1), never a mock of boto3."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest
from kfp_fixtures import dummy_credentials, free_port

from dbdgan.storage import MARKER, S3Store, StorageError, download, endpoint_url, parse_s3_uri, upload

CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "DBDGAN_S3_ENDPOINT_URL", "DBDGAN_S3_MAX_ATTEMPTS", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


@pytest.fixture(scope="module")
def endpoint(moto_endpoint: str) -> str:
    return moto_endpoint  # the suite's one S3 server (conftest)


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str) -> dict[str, str]:
    """Clean AWS env (no host config or instance metadata), test credentials, endpoint via our env var."""
    for name in CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    values = dummy_credentials()
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DBDGAN_S3_ENDPOINT_URL", endpoint)
    return values


def _bucket(endpoint: str, name: str) -> str:
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_parse_s3_uri() -> None:
    uri = parse_s3_uri("s3://bucket/a/b/")
    assert (uri.bucket, uri.key) == ("bucket", "a/b/")
    assert str(uri.child("c.txt")) == "s3://bucket/a/b/c.txt"
    with pytest.raises(ValueError, match="not an S3 URI"):
        parse_s3_uri("/local/path")


def test_endpoint_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DBDGAN_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    assert endpoint_url() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    assert endpoint_url() == "http://minio:9000"
    monkeypatch.setenv("DBDGAN_S3_ENDPOINT_URL", "http://other:9000")
    assert endpoint_url() == "http://other:9000"


def test_folder_round_trip(creds: dict[str, str], endpoint: str, tmp_path: Path) -> None:
    bucket = _bucket(endpoint, "roundtrip")
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "a.jpg").write_bytes(b"\xff\xd8 image a")
    (src / "images" / "b.jpg").write_bytes(bytes(range(256)) * 300)  # ~77 kB, binary
    (src / "manifest.csv").write_text("id,split\na,train\nb,test\n")

    uploaded = upload(src, f"s3://{bucket}/datasets/v1")
    assert sorted(str(u) for u in uploaded) == [f"s3://{bucket}/datasets/v1/{name}"
                                               for name in ("images/a.jpg", "images/b.jpg", "manifest.csv")]
    keys = S3Store().list_keys(f"s3://{bucket}/datasets/v1")
    assert f"datasets/v1/{MARKER}" in keys  # the completion marker is written last

    out = tmp_path / "out" / "dataset"
    assert download(f"s3://{bucket}/datasets/v1/", out, require_marker=True) == out
    assert _tree(out) == _tree(src)
    assert not any(p.name.endswith(".tmp") for p in out.parent.iterdir())

    single = download(f"s3://{bucket}/datasets/v1/manifest.csv", tmp_path / "one" / "manifest.csv")
    assert single.read_text() == (src / "manifest.csv").read_text()


def test_unfinished_upload_is_refused(creds: dict[str, str], endpoint: str, tmp_path: Path) -> None:
    bucket = _bucket(endpoint, "unfinished")
    boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=bucket, Key="half/part-0", Body=b"x")
    out = tmp_path / "out"
    with pytest.raises(StorageError, match="incomplete upload"):
        download(f"s3://{bucket}/half/", out, require_marker=True)
    assert not out.exists()


def test_missing_bucket(creds: dict[str, str], endpoint: str, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(StorageError, match="bucket does not exist") as info:
        upload(tmp_path / "f.txt", "s3://no-such-bucket/x/f.txt")
    assert "s3://no-such-bucket" in str(info.value) and endpoint in str(info.value)
    assert creds["AWS_SECRET_ACCESS_KEY"] not in str(info.value)


def test_missing_object_leaves_nothing(creds: dict[str, str], endpoint: str, tmp_path: Path) -> None:
    bucket = _bucket(endpoint, "missing-object")
    target = tmp_path / "model.pt"
    with pytest.raises(StorageError, match="does not exist") as info:
        download(f"s3://{bucket}/models/model.pt", target, folder=False)
    assert "models/model.pt" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no partial or temp file left behind


def test_unreachable_endpoint_is_bounded(creds: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    monkeypatch.setenv("DBDGAN_S3_ENDPOINT_URL", dead)
    monkeypatch.setenv("DBDGAN_S3_MAX_ATTEMPTS", "2")
    start = time.monotonic()
    with pytest.raises(StorageError, match="endpoint unreachable after retries") as info:
        download("s3://bucket/data/", tmp_path / "out")
    assert time.monotonic() - start < 20
    assert dead in str(info.value) and "s3://bucket" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_credentials(creds: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(StorageError, match="no usable AWS credentials") as info:
        upload(tmp_path / "f.txt", "s3://any-bucket/f.txt")
    assert "s3://any-bucket" in str(info.value)


def test_credentials_in_endpoint_url_are_not_shown(creds: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("DBDGAN_S3_ENDPOINT_URL", f"http://user:hunter2pass@127.0.0.1:{free_port()}")
    monkeypatch.setenv("DBDGAN_S3_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError) as info:
        download("s3://bucket/x.txt", tmp_path / "x.txt", folder=False)
    assert "hunter2pass" not in str(info.value) and "user:" not in str(info.value)
