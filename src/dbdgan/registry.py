"""MLflow model registry: log each network as a pyfunc, register a version, tag it, alias it `challenger`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from dbdgan.checkpoint import read_model_file
from dbdgan.config import Params
from dbdgan.tracking import configure, flatten

CHALLENGER = "challenger"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def params_hash(params: Params) -> str:
    return hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _read_metrics(metrics_dir: Path, role: str) -> dict[str, float]:
    path = metrics_dir / f"{role}.json"
    if not path.is_file():
        raise FileNotFoundError(f"metrics for {role!r} not found: {path} (run `dbdgan evaluate` first)")
    flat = flatten(json.loads(path.read_text()))
    metrics = {}
    for key, value in flat.items():
        try:
            metrics[key] = float(value)
        except ValueError:
            continue
    return metrics


def _log_pyfunc(model_path: Path, input_size: int | None) -> Any:
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    from dbdgan.serving import BlurMapModel

    example = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    signature = infer_signature(example, np.zeros((1, 32, 32), dtype=np.float32))
    package_dir = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        inference = Path(tmp) / "inference.json"
        inference.write_text(json.dumps({"input_size": input_size}))
        return mlflow.pyfunc.log_model(
            name="model", python_model=BlurMapModel(),
            artifacts={"checkpoint": str(model_path), "inference": str(inference)},
            code_paths=[str(package_dir)], signature=signature, input_example=example,
            pip_requirements=["torch", "numpy", "pandas", "Pillow", "pyyaml", "pydantic", "mlflow"],
        )


def register_models(params: Params, models: dict[str, Path], metrics_dir: Path, manifest: Path) -> dict[str, Any]:
    """`models` maps registered name -> model file; the role (teacher/student) is read from params."""
    import mlflow
    from mlflow import MlflowClient

    configure(params.register)
    client = MlflowClient()
    roles = {params.register.teacher_name: "teacher", params.register.student_name: "student"}
    common_tags = {"dataset_manifest_sha256": _sha256(manifest), "git_commit": _git_commit(),
                   "params_hash": params_hash(params)}
    result: dict[str, Any] = {}
    for name, model_path in models.items():
        role = roles[name]
        payload = read_model_file(model_path)
        metrics = _read_metrics(metrics_dir, role)
        run_id = payload["metadata"].get("mlflow_run_id") or None
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"register_{role}") as run:
            mlflow.log_metrics({f"eval.{k}": v for k, v in metrics.items()})
            info = _log_pyfunc(model_path, params.evaluate.input_size)
        tags = {**common_tags, "role": role, "arch": payload["arch"],
                **{f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()}}
        version = mlflow.register_model(info.model_uri, name, tags=tags)
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        result[role] = {"name": name, "version": int(version.version), "run_id": run.info.run_id,
                        "model_uri": f"models:/{name}/{version.version}", "arch": payload["arch"],
                        "metrics": metrics}
    return result
