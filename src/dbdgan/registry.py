"""MLflow model registry: log each network as a pyfunc, register a version, tag it, alias it `challenger`."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from dbdgan.checkpoint import read_model_file
from dbdgan.config import Params
from dbdgan.tracking import configure, flatten

log = logging.getLogger(__name__)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def params_hash(params: Params) -> str:
    text = json.dumps(params.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_evaluation(metrics_dir: Path, role: str, params: Params) -> tuple[dict[str, float], str]:
    """Numeric metrics (flattened, settings left out) and the evaluation protocol they were measured under."""
    path = metrics_dir / f"{role}.json"
    if not path.is_file():
        raise FileNotFoundError(f"metrics for {role!r} not found: {path} (run `dbdgan evaluate` first)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"metrics file {path} is not valid JSON: {exc}") from exc
    settings = data.pop("settings", None)
    if settings is None:  # written without settings: the protocol is the one params describe
        ev = params.evaluate
        settings = {"split": ev.split, "beta2": ev.beta2, "adaptive_factor": ev.adaptive_factor,
                    "thresholds": ev.thresholds, "flip_tta": ev.flip_tta,
                    "input_size": [ev.input_size] * 2 if ev.input_size else "native"}
    metrics = {}
    for key, value in flatten(data).items():
        try:
            metrics[key] = float(value)
        except ValueError:
            continue
    if "max_f" not in metrics or "mae" not in metrics:
        raise ValueError(f"metrics file {path} lacks max_f or mae (keys: {sorted(metrics)})")
    return metrics, json.dumps(settings, sort_keys=True)


def _example_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _requirements() -> list[str]:
    """The serving environment, pinned to the versions this model was logged with (local labels dropped)."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for dist in ("torch", "numpy", "pandas", "Pillow", "PyYAML", "pydantic", "mlflow"):
        try:
            pinned.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(dist)
    return pinned


_MODEL_CODE = """\
# The MLflow model-from-code entry point: the pyfunc class lives in dbdgan.serving (shipped in code/).
import mlflow

from dbdgan.serving import BlurMapModel

mlflow.models.set_model(BlurMapModel())
"""


def _log_pyfunc(model_path: Path, input_size: int | None) -> Any:
    """Log the pyfunc under the active run, as a model from code (nothing is pickled).

    The input schema is a batch of objects (arrays or encoded bytes: MLflow has no union type); the example
    is one encoded PNG, the form a served model usually receives.
    """
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(object), (-1,))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]))
    example = np.array([_example_png()], dtype=object)
    package_dir = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        inference = Path(tmp) / "inference.json"
        inference.write_text(json.dumps({"input_size": input_size}))
        model_code = Path(tmp) / "blur_map_model.py"
        model_code.write_text(_MODEL_CODE)
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(model_code),
            artifacts={"checkpoint": str(model_path), "inference": str(inference)},
            code_paths=[str(package_dir)], signature=signature, input_example=example,
            pip_requirements=_requirements(),
        )


def _training_run(client: Any, run_id: str | None) -> str | None:
    """The training run named in the model file, when it exists in this tracking store."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        client.get_run(run_id)
    except MlflowException:
        log.warning("training run %s of the model file is not in this store; using a new run", run_id)
        return None
    return run_id


def register_models(params: Params, models: dict[str, Path], metrics_dir: Path,
                    manifest: Path) -> dict[str, Any]:
    """`models` maps registered name -> model file; the role (teacher/student) is read from params.

    Each model is logged as a pyfunc under its training run, registered as a new version with provenance and
    metric tags, and aliased `challenger`; the student then goes through the promotion gate.
    """
    import mlflow
    from mlflow import MlflowClient

    from dbdgan.promotion import CHALLENGER, MANIFEST_TAG, METRIC_PREFIX, PROTOCOL_TAG, gate_params, run_gate

    configure(params.register)
    client = MlflowClient()
    roles = {params.register.teacher_name: "teacher", params.register.student_name: "student"}
    unknown = sorted(set(models) - set(roles))
    if unknown:
        raise ValueError(f"registered names {unknown} are neither register.teacher_name nor .student_name")
    common_tags = {MANIFEST_TAG: _sha256(manifest), "git_commit": _git_commit(),
                   "params_hash": params_hash(params), "teacher_preset": params.model.teacher,
                   "student_preset": params.model.student}
    # read every input first, so a missing metrics file cannot leave half of the models registered
    inputs = {name: (read_model_file(path), *_read_evaluation(metrics_dir, roles[name], params))
              for name, path in models.items()}
    result: dict[str, Any] = {}
    for name, (payload, metrics, protocol) in inputs.items():
        role, model_path = roles[name], models[name]
        trained_in = payload["metadata"].get("mlflow_run_id") or None
        run_id = _training_run(client, trained_in)
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"register_{role}") as run:
            mlflow.log_metrics({f"eval.{k}": v for k, v in metrics.items()})
            info = _log_pyfunc(model_path, params.evaluate.input_size)
        tags = {**common_tags, "role": role, "preset": payload["arch"],
                "arch_kwargs": json.dumps(payload["arch_kwargs"], sort_keys=True, default=str)[:4000],
                "model_sha256": _sha256(model_path), "training_run_id": trained_in or "",
                PROTOCOL_TAG: protocol,
                **{f"{METRIC_PREFIX}{k}": f"{v:.10g}" for k, v in metrics.items()}}
        version = mlflow.register_model(info.model_uri, name, tags=tags)
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        result[role] = {"name": name, "version": int(version.version), "run_id": run.info.run_id,
                        "model_uri": f"models:/{name}/{version.version}", "arch": payload["arch"],
                        "metrics": metrics}
    if "student" in result:
        entry = result["student"]
        entry["gate"] = run_gate(entry["name"], entry["version"], gate_params(params.register))
    return result
