"""Which MLflow run trained a model file: found by the file's sha256, tagged on the run, not stored in the file.

A model file that named its run (a fresh uuid each time) would differ on every retraining of the same commit,
so dvc.lock would never reproduce; the run is tagged with the file's hash instead. Files written before the
tag existed still name their run in `metadata.mlflow_run_id`, which is used first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dbdgan.io_utils import file_sha256

MODEL_SHA_TAG = "dbdgan.model_sha256"


def tag_training_run(path: str | Path) -> None:
    """Tag the active MLflow run with the hash of the model file it wrote."""
    import mlflow

    mlflow.set_tag(MODEL_SHA_TAG, file_sha256(path))


def training_run_id(client: Any, path: str | Path, metadata: dict[str, Any]) -> str | None:
    """The run that trained `path` in the client's store (the newest when several wrote the same bytes)."""
    named = metadata.get("mlflow_run_id")
    if named:
        return str(named)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(experiments, filter_string=f"tags.`{MODEL_SHA_TAG}` = '{file_sha256(path)}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None
