"""Bring a model file from where it is kept (a local file, S3, the MLflow registry) to a local path.

What lets a pipeline distil a new student from a teacher that an earlier run trained and registered, without
training it again. The file is checked like any other model file (`torch.load(weights_only=True)`), and what
it is goes with it as provenance: the URI it came from, its sha256, and for a registry URI the version and the
run that trained it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from dbdgan.checkpoint import read_model_file
from dbdgan.io_utils import atomic_write_bytes, file_sha256
from dbdgan.redact import redact


def _registry_version(uri: str, client: Any) -> Any:
    """The model version a `models:/NAME/VERSION` or `models:/NAME@ALIAS` URI names."""
    from mlflow.exceptions import MlflowException

    ref = uri.removeprefix("models:/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = ref.partition("/")
        if not name or not version.isdigit():
            raise ValueError(f"{uri!r} is not models:/NAME/VERSION or models:/NAME@ALIAS")
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise ValueError(f"no registered model {uri!r} in {redact(client.tracking_uri)}: "
                         f"{str(exc).splitlines()[0]}") from None


def _from_registry(uri: str, out: Path, tracking_uri: str | None, role: str) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    from dbdgan.inference import checkpoint_from_mlflow_dir

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    version = _registry_version(uri, client)
    found_role = version.tags.get("role")
    if found_role and found_role != role:
        raise ValueError(f"{uri} is registered as a {found_role}, not a {role}")
    exact = f"models:/{version.name}/{version.version}"
    with tempfile.TemporaryDirectory(prefix="dbdgan-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=exact, dst_path=tmp))
        checkpoint, _ = checkpoint_from_mlflow_dir(local)
        arch = _install(checkpoint, out)
    return {"arch": arch, "source": exact, "requested": uri, "registered_name": version.name,
            "registered_version": int(version.version), "training_run_id": version.tags.get("training_run_id", ""),
            "git_commit": version.tags.get("git_commit", "")}


def _install(path: Path, out: Path) -> str:
    """Check that `path` is a dbdgan model file, then write it to `out` in one step; returns its arch."""
    arch = str(read_model_file(path)["arch"])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, path.read_bytes())
    return arch


def fetch_model(source: str, out: str | Path, role: str = "teacher",
                tracking_uri: str | None = None) -> dict[str, Any]:
    """Copy the model at `source` (file, s3://bucket/key, models:/NAME/VERSION or models:/NAME@ALIAS) to `out`.

    Returns its provenance (`source`: the exact URI, a registry alias resolved to its version; `sha256`). A
    registered version whose `role` tag is not `role` is refused: distilling from a student is a mistake.
    """
    from dbdgan.storage import download, is_s3_uri

    text, out = source.strip(), Path(out)
    if not text:
        raise ValueError("no model source given")
    if text.startswith("models:/"):
        facts = _from_registry(text, out, tracking_uri, role)
    elif is_s3_uri(text):
        with tempfile.TemporaryDirectory(prefix="dbdgan-model-") as tmp:
            facts = {"arch": _install(download(text, Path(tmp) / "model.pt", folder=False), out), "source": text}
    else:
        facts = {"arch": _install(Path(text), out), "source": str(Path(text).resolve())}
    return {**facts, "sha256": file_sha256(out)}
