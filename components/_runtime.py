"""Glue that runs inside a component's container: params, tracking env, scratch space, reports for the KFP UI.

No ML here: every computation is a `dbdgan.steps` call. This module must not import kfp (it is imported
at run time, where only the artifact objects handed in by the KFP executor are available).
"""

from __future__ import annotations

import base64
import html
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from dbdgan.config import Params, params_from_dict
from dbdgan.data import manifest
from dbdgan.tracking import Tracking

log = logging.getLogger(__name__)


def _log_to_pod() -> None:
    """The library's INFO lines (epoch lines, resume notices) go to the pod's log, where `kubectl logs`, the
    KFP UI and Katib's metrics collector read them; the CLI sets this up in its own main()."""
    library = logging.getLogger("dbdgan")
    if not library.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        library.addHandler(handler)
        library.setLevel(logging.INFO)


_log_to_pod()
# Read by dbdgan.lineage: the Kubeflow run that produced a registered model.
PIPELINE_RUN_ENV = "DBDGAN_PIPELINE_RUN_ID"

def load_params(params: str) -> Params:
    """The step's params (the part of params.yaml it reads, baked in at compile time): hyperparameters only.

    Keys the step does not read keep their defaults; they cannot change its result.
    """
    try:
        tree = yaml.safe_load(params) if params.strip() else {}
    except yaml.YAMLError as exc:
        raise ValueError(f"component input params is not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ValueError("component input params must hold a mapping at the top level")
    return params_from_dict(tree, source="component input params")


# Set by the cluster compile (pipelines/k8s.py) to the ConfigMap it reads MLFLOW_TRACKING_URI from.
CONFIG_MAP_ENV = "DBDGAN_CONFIG_MAP"


class TrackingNotConfigured(RuntimeError):
    """A component has no tracking server: a local store would vanish with its pod, models and all."""


def tracking(mlflow_tracking_uri: str, experiment: str) -> Tracking:
    """Where a step tracks: a non-empty pipeline parameter, else the pod's MLFLOW_TRACKING_URI.

    Never the CLI's local sqlite default: inside a pod that store is deleted with the pod, so a step that
    "registered" a model would have registered it nowhere.
    """
    uri = mlflow_tracking_uri.strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        config_map = os.environ.get(CONFIG_MAP_ENV, "").strip() or "dbdgan-config"
        raise TrackingNotConfigured(
            f"no MLflow tracking server configured for this step: set MLFLOW_TRACKING_URI in the pod (key "
            f"MLFLOW_TRACKING_URI of the ConfigMap {config_map!r}, see docs/kubernetes.md) or the pipeline "
            "parameter mlflow_tracking_uri; a component does not fall back to a local sqlite store, which "
            "would vanish with the pod")
    return Tracking(uri=uri, experiment=experiment)


def scratch(name: str) -> Path:
    """A fresh folder for files that are not outputs (downloads); never the working tree."""
    return Path(tempfile.mkdtemp(prefix=f"dbdgan-{name}-"))


def checkpoints(workspace: str, task: str) -> Path:
    """Where a training task keeps `last.pt`: in the run's workspace, so that a retry of the task resumes.

    The workspace (a PVC on a cluster, a folder under kfp.local) lives as long as the pipeline run and is the
    same for every attempt of a task; the task's name keeps the pre-training and the real run apart. Without
    a workspace (compiled with --workspace-size 0) the checkpoints go to the pod's temp folder and a retried
    task starts again from its first epoch.
    """
    if not workspace.strip():
        log.warning("no pipeline workspace: %s keeps its checkpoints in the pod, a retry starts from epoch 1",
                    task)
        return scratch(f"{task}-checkpoints")
    return Path(workspace) / "checkpoints" / task


def set_pipeline_run(run_id: str) -> None:
    """Record the Kubeflow run id for the lineage the library writes (registry tags, model cards)."""
    if run_id.strip():
        os.environ[PIPELINE_RUN_ENV] = run_id.strip()


def publish(path: str | Path, reports_uri: str, run_id: str, name: str) -> str:
    """Copy a report (file or folder) to `<reports_uri>/<run_id>/<name>` if reports_uri is set; return it."""
    if not reports_uri.strip():
        return ""
    from dbdgan.storage import upload

    target = f"{reports_uri.strip().rstrip('/')}/{run_id or 'local'}/{name}"
    upload(path, target)
    return target


def scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict under dotted keys (what a KFP Metrics artifact can show)."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(scalars(value, f"{dotted}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[dotted] = float(value)
    return flat


def split_counts(data_dir: str | Path) -> dict[str, int]:
    """Images per split of a prepared folder (dbdgan.data.manifest.split_counts)."""
    return manifest.split_counts(data_dir)


def markdown(title: str, rows: dict[str, Any], note: str = "") -> str:
    lines = [f"# {title}", "", "| key | value |", "| --- | --- |"]
    lines += [f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
              for key, value in rows.items()]
    return "\n".join([*lines, "", note]).rstrip() + "\n"


def html_page(title: str, tables: dict[str, dict[str, float]], images: list[Path]) -> str:
    """One self-contained HTML file (images inlined) that the KFP UI renders as a visualization."""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if tables:
        keys = sorted({key for table in tables.values() for key in table})
        parts.append("<table border='1' cellpadding='4'><tr><th>metric</th>"
                     + "".join(f"<th>{html.escape(name)}</th>" for name in tables) + "</tr>")
        for key in keys:
            cells = "".join(f"<td>{table[key]:.4f}</td>" if key in table else "<td></td>"
                            for table in tables.values())
            parts.append(f"<tr><td>{html.escape(key)}</td>{cells}</tr>")
        parts.append("</table>")
    for image in images:
        if image.is_file():
            data = base64.b64encode(image.read_bytes()).decode()
            parts.append(f"<h2>{html.escape(image.name)}</h2><img src='data:image/png;base64,{data}'/>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_text(path: str | Path, text: str) -> None:
    """Output artifact files: the folder may not exist yet under a local pipeline root."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")


def report_training(result: dict[str, Any], metrics: Any, model: Any, arch: str) -> None:
    """A training step's summary as KFP metrics and as metadata of its Model artifact."""
    values = scalars({k: v for k, v in result.items() if k != "history"})
    for key, value in values.items():
        metrics.log_metric(key, value)
    model.metadata.update({"arch": arch, "framework": "pytorch", "mlflow_run_id": result.get("mlflow_run_id") or "",
                           **values})
