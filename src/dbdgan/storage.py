"""S3 (or MinIO) storage for datasets and reports, through boto3.

Credentials come only from boto3's standard chain (env, shared files, instance/pod roles); this module never
reads, logs or formats a credential value. The endpoint URL comes from `DBDGAN_S3_ENDPOINT_URL`,
`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (first set wins; none means AWS itself), so one call works
against AWS, MinIO or a local test server. Every failure becomes a `StorageError` that names the bucket, key
and endpoint. Transient network errors get bounded retries with exponential backoff (botocore "standard"
mode), so an unreachable endpoint fails after seconds, not minutes.

Completeness: a download is written to a temporary file (or folder) beside its target and renamed into place
only when all of it arrived. A folder upload writes its objects first and a `_SUCCESS.json` marker (the list
of keys, sizes and sha256) last, after deleting any stale marker, so a reader that requires the marker never
takes a half-uploaded prefix for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dbdgan.io_utils import atomic_dir, file_sha256
from dbdgan.redact import redact

ENDPOINT_ENV_VARS = ("DBDGAN_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
MAX_ATTEMPTS_ENV = "DBDGAN_S3_MAX_ATTEMPTS"
DEFAULT_MAX_ATTEMPTS = 5  # botocore standard mode: ~1 s, 2 s, 4 s ... backoff with jitter, capped at 20 s
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
MARKER = "_SUCCESS.json"


class StorageError(RuntimeError):
    """An S3 transfer that failed; the message names bucket, key and endpoint, never a credential."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def child(self, name: str) -> S3Uri:
        return S3Uri(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key.strip("/") else name)


def parse_s3_uri(uri: str) -> S3Uri:
    """`s3://bucket/some/prefix` -> S3Uri; anything else is a clear ValueError."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an S3 URI (expected s3://bucket/prefix): {uri!r}")
    return S3Uri(parts.netloc, parts.path.lstrip("/"))


def is_s3_uri(uri: str | os.PathLike[str]) -> bool:
    return str(uri).startswith("s3://")


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment (MinIO, a local server), or None for AWS."""
    for name in ENDPOINT_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _redact(url: str | None) -> str:
    """Endpoint for messages: a password in the URL is masked, the query (presigned tokens) dropped."""
    if not url:
        return "the default AWS endpoint"
    parts = urlsplit(url)
    return redact(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


def _max_attempts(max_attempts: int | None) -> int:
    if max_attempts is not None:
        return max(1, max_attempts)
    raw = os.environ.get(MAX_ATTEMPTS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_ATTEMPTS
    try:
        return max(1, int(raw))
    except ValueError:
        raise StorageError(f"{MAX_ATTEMPTS_ENV} must be an integer, got {raw!r}") from None


class S3Store:
    """One configured S3 client plus the transfers; build it once per step and reuse it."""

    def __init__(self, endpoint: str | None = None, *, max_attempts: int | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S) -> None:
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint if endpoint is not None else endpoint_url()
        self._session = boto3.session.Session()
        config = Config(retries={"max_attempts": _max_attempts(max_attempts), "mode": "standard"},
                        connect_timeout=connect_timeout, read_timeout=read_timeout,
                        s3={"addressing_style": "path"} if self.endpoint else None)
        self._client = self._session.client("s3", endpoint_url=self.endpoint or None, config=config)
        self._checked: set[str] = set()

    # ---- error handling -------------------------------------------------------------------------------

    def _where(self, uri: S3Uri | str) -> str:
        return f"{uri} (endpoint {_redact(self.endpoint)})"

    def _error(self, action: str, uri: S3Uri | str, exc: BaseException) -> StorageError:
        """Map a boto3/botocore exception to a StorageError that says what to fix."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        cause: BaseException = exc
        if isinstance(exc, S3UploadFailedError) and (exc.__cause__ or exc.__context__) is not None:
            cause = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        where = self._where(uri)
        if isinstance(cause, NoCredentialsError | PartialCredentialsError):
            reason = ("no usable AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                      "AWS_PROFILE, or a pod/instance role)")
        elif isinstance(cause, ConnectionError | HTTPClientError):
            reason = f"endpoint unreachable after retries: {type(cause).__name__}"
        elif isinstance(cause, ClientError):
            code = str(cause.response.get("Error", {}).get("Code", ""))
            status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (status == 404 and action == "check bucket"):
                reason = "bucket does not exist"
            elif code in ("NoSuchKey", "404", "NotFound"):
                reason = "object does not exist"
            elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"):
                reason = f"access denied ({code}): check the credentials and the bucket policy"
            else:
                reason = f"S3 error {code or status}"
        else:
            reason = f"{type(cause).__name__}: {cause}"
        return StorageError(f"cannot {action} {where}: {reason}")

    def _require_credentials(self, uri: S3Uri) -> None:
        if self._session.get_credentials() is None:
            from botocore.exceptions import NoCredentialsError

            raise self._error("access", uri, NoCredentialsError())

    def check_bucket(self, uri: S3Uri) -> None:
        """Fail early, and clearly, on missing credentials, a missing bucket or an unreachable endpoint."""
        if uri.bucket in self._checked:
            return
        self._require_credentials(uri)
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=uri.bucket)
        except ClientError as exc:
            # A writer may lack s3:ListBucket (HEAD needs it); the transfer itself then says if access fails.
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 403:
                raise self._error("check bucket", S3Uri(uri.bucket, ""), exc) from None
        except Exception as exc:
            raise self._error("check bucket", S3Uri(uri.bucket, ""), exc) from None
        self._checked.add(uri.bucket)

    # ---- files ----------------------------------------------------------------------------------------

    def upload_file(self, path: str | Path, uri: str | S3Uri) -> S3Uri:
        """Upload one file; S3 makes the object visible only once the whole (multipart) upload is done."""
        path, target = Path(path), _as_uri(uri)
        if not path.is_file():
            raise FileNotFoundError(f"cannot upload {path}: not a file")
        self.check_bucket(target)
        try:
            self._client.upload_file(str(path), target.bucket, target.key)
        except Exception as exc:
            raise self._error(f"upload {path} to", target, exc) from None
        return target

    def download_file(self, uri: str | S3Uri, path: str | Path) -> Path:
        """Download to a temp file beside `path`, then rename: `path` is either complete or untouched."""
        source, path = _as_uri(uri), Path(path)
        self.check_bucket(source)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            self._client.download_file(source.bucket, source.key, tmp)
            os.replace(tmp, path)
        except Exception as exc:
            Path(tmp).unlink(missing_ok=True)
            raise self._error(f"download to {path} from", source, exc) from None
        return path

    # ---- folders --------------------------------------------------------------------------------------

    def list_keys(self, uri: str | S3Uri) -> list[str]:
        """Keys under a prefix (treated as a folder: `prefix/`)."""
        prefix = _as_uri(uri)
        self.check_bucket(prefix)
        folder = f"{prefix.key.rstrip('/')}/" if prefix.key.strip("/") else ""
        keys: list[str] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=prefix.bucket, Prefix=folder):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        except Exception as exc:
            raise self._error("list", prefix, exc) from None
        return keys

    def upload_dir(self, folder: str | Path, uri: str | S3Uri) -> list[S3Uri]:
        """Upload every file under `folder` to `uri/<relative path>`, then write the completion marker."""
        folder, prefix = Path(folder), _as_uri(uri)
        if not folder.is_dir():
            raise FileNotFoundError(f"cannot upload {folder}: not a folder")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        self.check_bucket(prefix)
        marker = prefix.child(MARKER)
        try:
            self._client.delete_object(Bucket=marker.bucket, Key=marker.key)
        except Exception as exc:
            raise self._error("clear the completion marker", marker, exc) from None
        uploaded, entries = [], []
        for path in files:
            rel = path.relative_to(folder).as_posix()
            uploaded.append(self.upload_file(path, prefix.child(rel)))
            entries.append({"path": rel, "size": path.stat().st_size, "sha256": file_sha256(path)})
        body = json.dumps({"files": entries}, indent=2, sort_keys=True).encode()
        try:
            self._client.put_object(Bucket=marker.bucket, Key=marker.key, Body=body)
        except Exception as exc:
            raise self._error("write the completion marker", marker, exc) from None
        return uploaded

    def download_dir(self, uri: str | S3Uri, folder: str | Path, *, require_marker: bool = False) -> Path:
        """Download every object under `uri` into `folder`, atomically (temp folder, then rename).

        With a completion marker present, the listed files and their sha256 are checked; `require_marker`
        refuses prefixes that `upload_dir` did not finish.
        """
        prefix, folder = _as_uri(uri), Path(folder)
        keys = self.list_keys(prefix)
        base = f"{prefix.key.rstrip('/')}/" if prefix.key.strip("/") else ""
        marker_key = f"{base}{MARKER}"
        if not keys:
            raise StorageError(f"nothing to download: no objects under {self._where(prefix)}")
        if require_marker and marker_key not in keys:
            raise StorageError(f"incomplete upload: {self._where(prefix.child(MARKER))} is missing")
        with atomic_dir(folder) as tmp:
            for key in keys:
                if key == marker_key:
                    continue
                rel = PurePosixPath(key[len(base):])
                if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                    raise StorageError(f"refusing unsafe key {key!r} under {self._where(prefix)}")
                self.download_file(S3Uri(prefix.bucket, key), tmp.joinpath(*rel.parts))
            if marker_key in keys:
                self._verify(prefix, marker_key, tmp)
        return folder

    def marker_digest(self, uri: str | S3Uri) -> str:
        """sha256 of a finished upload's completion marker: names the folder's exact content in one value."""
        prefix = _as_uri(uri)
        marker = prefix.child(MARKER)
        self.check_bucket(marker)
        try:
            body = self._client.get_object(Bucket=marker.bucket, Key=marker.key)["Body"].read()
        except Exception as exc:
            raise self._error("read the completion marker", marker, exc) from None
        return hashlib.sha256(body).hexdigest()

    def _verify(self, prefix: S3Uri, marker_key: str, folder: Path) -> None:
        try:
            body = self._client.get_object(Bucket=prefix.bucket, Key=marker_key)["Body"].read()
        except Exception as exc:
            raise self._error("read the completion marker", S3Uri(prefix.bucket, marker_key), exc) from None
        for entry in json.loads(body)["files"]:
            path = folder / entry["path"]
            if not path.is_file() or file_sha256(path) != entry["sha256"]:
                raise StorageError(f"{prefix.child(entry['path'])} is missing or differs from its sha256 in "
                                   f"{MARKER} (endpoint {_redact(self.endpoint)})")


def _as_uri(uri: str | S3Uri) -> S3Uri:
    return uri if isinstance(uri, S3Uri) else parse_s3_uri(uri)


def check_reachable(uri: str, **store_kwargs: Any) -> None:
    """Fail now, clearly, if a later upload to `uri` could not start (credentials, bucket, endpoint); "" is off.

    A step calls it before its first write, so S3 being down cannot leave half of its work done.
    """
    if uri.strip():
        S3Store(**store_kwargs).check_bucket(parse_s3_uri(uri.strip()))


def dataset_digest(uri: str, **store_kwargs: Any) -> str:
    """The content digest of a folder uploaded to `s3://bucket/prefix` (see `S3Store.marker_digest`)."""
    return S3Store(**store_kwargs).marker_digest(uri)


def upload(path: str | Path, uri: str, **store_kwargs: Any) -> list[S3Uri]:
    """Upload a file or a folder (with its completion marker) to `s3://bucket/prefix`."""
    store = S3Store(**store_kwargs)
    path = Path(path)
    return store.upload_dir(path, uri) if path.is_dir() else [store.upload_file(path, uri)]


def download(uri: str, path: str | Path, *, folder: bool | None = None, require_marker: bool = False,
             **store_kwargs: Any) -> Path:
    """Download an object (folder=False) or every object under a prefix (folder=True).

    folder=None: a prefix when `uri` ends with "/" or has objects below it, else one object.
    """
    store = S3Store(**store_kwargs)
    as_folder = folder if folder is not None else (uri.endswith("/") or bool(store.list_keys(uri)))
    if as_folder:
        return store.download_dir(uri, path, require_marker=require_marker)
    return store.download_file(uri, path)
