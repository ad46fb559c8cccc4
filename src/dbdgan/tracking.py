"""MLflow tracking: one place that knows the tracking URI, the experiment and how params are flattened.

Where runs are tracked and under which names models are registered are arguments of the steps (`Tracking`,
`ModelNames`), not params: the CLI, DVC and KFP each pass them explicitly.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbdgan import lineage
from dbdgan.config import Params
from dbdgan.redact import mask_handlers, redact

log = logging.getLogger(__name__)

_SECRET_MARKERS = ("secret", "password", "token", "access_key", "credential")
_RETRY_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
              "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT")
_applied: dict[str, str] = {}  # the retry settings this module exported, so later params may change them


LOCAL_STORE = "sqlite:///mlflow/mlflow.db"
DEFAULT_EXPERIMENT = "dbdgan"


@dataclass(frozen=True)
class Tracking:
    """The MLflow store and experiment a step logs to. `uri=None`: $MLFLOW_TRACKING_URI, else the local store."""

    uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    # artifacts of new experiments in a local store; None: `artifacts` beside the sqlite file
    artifact_location: str | None = None

    @property
    def resolved_uri(self) -> str:
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or LOCAL_STORE

    def local_artifacts(self) -> Path:
        if self.artifact_location:
            return Path(self.artifact_location)
        uri = self.resolved_uri
        store = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else Path("mlflow/mlflow.db")
        return store.parent / "artifacts"


@dataclass(frozen=True)
class ModelNames:
    """Registered model names of the two roles."""

    teacher: str = "dbd-teacher"
    student: str = "dbd-student"


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def retry_settings(timeout_s: float) -> dict[str, str]:
    """MLflow HTTP client settings whose retries end within about `timeout_s` on an unreachable server.

    urllib3 sleeps 0, 2, 4, ... s (backoff factor 1) plus up to 1 s jitter between attempts: the most
    retries whose sleeps fit the budget; each request waits at most `timeout_s` for an answer.
    """
    retries = 0
    while 2 ** (retries + 1) - 2 + (retries + 1) <= timeout_s:
        retries += 1
    return dict(zip(_RETRY_ENV, (str(retries), "1", "1.0", str(max(1, math.ceil(timeout_s)))), strict=True))


def bound_waits(timeout_s: float) -> None:
    """Export retry_settings(timeout_s) for MLflow, leaving alone any of them that the user set."""
    for name, value in retry_settings(timeout_s).items():
        if os.environ.get(name) in (None, _applied.get(name)):
            os.environ[name] = _applied[name] = value


def _mask_mlflow_output(uri: str) -> None:
    """MLflow's own output never shows the URI's credentials.

    Its loggers write through their own handler (propagate off), so they get the redacting filter; and it
    prints each run's URL (`View run ... at: http://user:password@...`) straight to stdout: with credentials in
    the URI that printing is turned off, unless the user chose otherwise.
    """
    mask_handlers(logging.getLogger("mlflow"))
    if redact(uri) != uri:
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a sqlite store while MLflow opens it (a no-op for other stores).

    The first process to open a new sqlite file creates its tables and runs the schema migrations; a second
    process doing the same at once fails in alembic ("Online migration expected to match one row"). Opening
    both the tracking and the registry store under the lock leaves later processes an up-to-date schema.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    from mlflow import MlflowClient

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(f"{db.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models(max_results=1)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def configure(tracking: Tracking, timeout_s: float) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns the experiment id.

    timeout_s: params `register.service_timeout_s`, the longest wait on an unreachable server.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    bound_waits(timeout_s)
    uri = tracking.resolved_uri
    _mask_mlflow_output(uri)
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
    with store_lock(uri):
        experiment = mlflow.get_experiment_by_name(tracking.experiment)
    if experiment is not None:
        mlflow.set_experiment(tracking.experiment)
        return experiment.experiment_id
    location = tracking.local_artifacts().resolve().as_uri() if _is_local_store(uri) else None
    try:
        experiment_id = mlflow.create_experiment(tracking.experiment, artifact_location=location)
    except MlflowException:
        # Another process created it between our look-up and create: use theirs.
        experiment = mlflow.get_experiment_by_name(tracking.experiment)
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
            flat[dotted] = redact(str(value))[:500]
    return flat


def _existing_run(run_id: str | None) -> str | None:
    """`run_id` when the configured store has it; None (a new run, with a warning) when it does not."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        MlflowClient().get_run(run_id)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        import mlflow

        log.warning("MLflow run %s of the checkpoint is not in the tracking store %s (switched or deleted): "
                    "starting a new run", run_id, redact(mlflow.get_tracking_uri()))
        return None
    return run_id


def run_lineage_tags(code: lineage.Lineage) -> dict[str, str]:
    """A run's lineage tags: `dbdgan.git_commit`, ... and MLflow's own source-commit tag, which its UI shows
    (MLflow would otherwise guess it from the folder of the script that started Python)."""
    tags = code.tags(prefix="dbdgan.")
    if code.commit != lineage.UNKNOWN:
        tags["mlflow.source.git.commit"] = code.commit
    return tags


def _stage_params(stage: str, params: Params) -> dict[str, Any]:
    """The params a pipeline step reads (graph.STEPS), so that its run shows no value it never used."""
    from dbdgan import graph

    tree = params.model_dump(mode="json")
    names = {one.name for one in graph.STEPS}
    return graph.step_params(graph.step(stage), tree) if stage in names else tree


@contextmanager
def stage_run(params: Params, stage: str, tracking: Tracking, run_id: str | None = None,
              enabled: bool = True) -> Iterator[Any]:
    """Start (or resume, by id) the MLflow run of a stage; yields None when tracking is disabled."""
    if not enabled:
        yield None
        return
    import mlflow

    configure(tracking, params.register.service_timeout_s)
    run_id = _existing_run(run_id)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else stage) as run:
        if run_id is None:
            mlflow.set_tags({"dbdgan.stage": stage, **run_lineage_tags(lineage.current())})
            mlflow.log_params(flatten(_stage_params(stage, params)))
        yield run
