"""MLflow tracking: one place that knows the tracking URI, the experiment and how params are flattened."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dbdgan.config import Params, RegisterParams

_SECRET_MARKERS = ("secret", "password", "token", "access_key", "credential")


def tracking_uri(register: RegisterParams) -> str:
    """MLFLOW_TRACKING_URI wins over params, so one pipeline runs against a laptop store or a server."""
    return os.environ.get("MLFLOW_TRACKING_URI") or register.tracking_uri


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def configure(register: RegisterParams) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns the experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(register)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # set_tracking_uri also exports the variable; undo that so a later configure() in this process with other
    # params is not silently pinned to this store.
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    experiment = mlflow.get_experiment_by_name(register.experiment)
    if experiment is not None:
        mlflow.set_experiment(register.experiment)
        return experiment.experiment_id
    location = Path(register.artifact_location).resolve().as_uri() if _is_local_store(uri) else None
    try:
        experiment_id = mlflow.create_experiment(register.experiment, artifact_location=location)
    except MlflowException:
        # Another process created it between our look-up and create: use theirs.
        experiment = mlflow.get_experiment_by_name(register.experiment)
        if experiment is None:
            raise
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys for MLflow params; values that look like credentials are never logged."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        elif any(marker in dotted.lower() for marker in _SECRET_MARKERS):
            continue
        else:
            flat[dotted] = str(value)[:500]
    return flat


@contextmanager
def stage_run(params: Params, stage: str, run_id: str | None = None, enabled: bool = True) -> Iterator[Any]:
    """Start (or resume, by id) the MLflow run of a stage; yields None when tracking is disabled."""
    if not enabled:
        yield None
        return
    import mlflow

    configure(params.register)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else stage) as run:
        if run_id is None:
            mlflow.set_tag("dbdgan.stage", stage)
            mlflow.log_params(flatten(params.model_dump(mode="json")))
        yield run
