"""Reads from an MLflow store that is not there fail in one line, and create nothing.

MLflow opens a sqlite URI by creating the file (and a file store by creating its folder), so a
`models:/NAME@ALIAS` read from the wrong folder used to leave an empty ./mlflow/mlflow.db behind and say the
model does not exist. Every read of a registry URI checks the store first and names where to point instead.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from dbdgan.redact import redact

HINT = "point at yours with --tracking-uri URI or the MLFLOW_TRACKING_URI environment variable"


class StoreNotFound(FileNotFoundError):
    """The tracking store named by a URI does not exist (nothing was created)."""


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local store URI names (sqlite file, file: or plain path); None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(unquote(uri.removeprefix("sqlite:///")))
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme:
        return Path(uri)
    return None


def require_store(uri: str) -> None:
    """Raise StoreNotFound when a local store is missing; servers are left to the request's bounded wait."""
    path = local_store_path(uri)
    if path is None:
        return
    if not (path.is_file() if uri.startswith("sqlite:") else path.is_dir()):
        raise StoreNotFound(f"no MLflow store at {redact(uri)} ({path.resolve()} does not exist); {HINT}")
