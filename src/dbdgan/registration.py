"""MLflow model registry: log each network as a pyfunc, register a version, tag it, alias it `challenger`.

Each version explains itself: a description (data, networks, key metrics beside the champion's), a model card
(`model_card.md`, beside the weights and in the run), the evaluation metrics on the logged model (MLflow 3
`LoggedModel` metrics) and the prepared dataset as the run's training input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from dbdgan import lineage
from dbdgan.checkpoint import read_model_file
from dbdgan.config import Params
from dbdgan.data import manifest as manifest_file
from dbdgan.evaluation.scores import read_scores
from dbdgan.inference import quiet_download
from dbdgan.io_utils import file_sha256
from dbdgan.model_card import BASELINE_NAMES, CardFacts, description, model_card
from dbdgan.model_runs import training_run_id
from dbdgan.tracking import ModelNames, Tracking, configure, flatten, run_lineage_tags

log = logging.getLogger(__name__)


def params_hash(params: Params) -> str:
    text = json.dumps(params.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_evaluation(metrics_dir: Path, role: str, params: Params) -> tuple[dict[str, float], str]:
    """Numeric metrics (flattened, settings left out) and the evaluation protocol they were measured under."""
    path = metrics_dir / f"{role}.json"
    data = read_scores(metrics_dir, role)
    if data is None:
        raise FileNotFoundError(f"metrics for {role!r} not found: {path} (run `dbdgan evaluate` first)")
    settings = data.pop("settings", None)
    if settings is None:  # written without settings: the protocol is the one params describe
        ev = params.evaluate
        settings = {"split": ev.split, "beta2": ev.beta2, "adaptive_factor": ev.adaptive_factor,
                    "thresholds": ev.thresholds, "flip_tta": ev.flip_tta}
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


def _log_pyfunc(model_path: Path, card: str) -> Any:
    """Log the pyfunc under the active run, as a model from code (nothing is pickled).

    The model file is the `checkpoint` artifact and carries the input size it was validated at: the pyfunc
    and `dbdgan predict` read it there (versions registered before also carry an `inference.json` with it).

    The input schema is a batch of objects (arrays or encoded bytes: MLflow has no union type); the example
    is one encoded PNG, the form a served model usually receives. The inference parameters (`output`,
    `max_side`) are declared with their defaults; the output (one record per image) has no MLflow schema type.
    """
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from dbdgan.serving import PARAMS
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(object), (-1,))]), params=PARAMS)
    example = np.array([_example_png()], dtype=object)
    package_dir = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        model_code = Path(tmp) / "blur_map_model.py"
        model_code.write_text(_MODEL_CODE)
        card_file = Path(tmp) / "model_card.md"
        card_file.write_text(card)
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(model_code),
            artifacts={"checkpoint": str(model_path), "model_card": str(card_file)},
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


def _preflight(client: Any, experiment_id: str, names: list[str]) -> dict[str, bool]:
    """Reach every service a registration writes to before the first write; {name: registered model exists}.

    The tracking server answered in configure(); here the registry and, for an experiment that stores
    artifacts in S3 itself, the bucket.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from dbdgan.storage import S3Store, is_s3_uri, parse_s3_uri

    existed = {}
    for name in names:
        try:
            client.get_registered_model(name)
            existed[name] = True
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            existed[name] = False
    experiment = mlflow.get_experiment(experiment_id)
    if is_s3_uri(experiment.artifact_location):
        S3Store().check_bucket(parse_s3_uri(experiment.artifact_location))
    return existed


def _same_version(client: Any, name: str, tags: dict[str, str]) -> Any:
    """The newest version of `name` that already holds this very model file (same sha256), or None.

    The file decides, not the metrics: a student-only experiment re-evaluates the unchanged teacher, and its
    timings move with the machine's load; a version per rerun would fill the registry with duplicates.
    """
    found = client.search_model_versions(f"name='{name}' and tags.model_sha256='{tags['model_sha256']}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def _champion(client: Any, name: str) -> dict[str, Any] | None:
    """The current champion's version and `metric.*` tags, to set a new version's numbers beside."""
    from mlflow.exceptions import MlflowException

    from dbdgan.aliases import CHAMPION
    from dbdgan.gate import METRIC_PREFIX

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    metrics = {}
    for key, value in version.tags.items():
        if key.startswith(METRIC_PREFIX):
            try:
                metrics[key.removeprefix(METRIC_PREFIX)] = float(value)
            except ValueError:
                continue
    return {"version": int(version.version), "metrics": metrics}


def _baselines(metrics_dir: Path) -> dict[str, dict[str, float]]:
    """The baselines' numbers written by the evaluate step beside the models' (absent files are left out)."""
    found = {}
    for name in BASELINE_NAMES:
        try:
            data = read_scores(metrics_dir, name)
        except (OSError, ValueError):
            continue
        if data is None:
            continue
        found[name] = {k: float(v) for k, v in data.items() if isinstance(v, int | float)}
    return found


def training_dataset(manifest: Path, data_source: str, digest: str) -> Any:
    """The prepared dataset as an MLflow dataset: its manifest's rows, named by source, digest from its hash."""
    import mlflow.data
    import pandas as pd

    frame = pd.read_csv(manifest, dtype=str)
    with warnings.catch_warnings():  # MLflow registers two local-file source types and says so for each path
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return mlflow.data.from_pandas(frame, source=str(Path(manifest).resolve()),
                                       name=f"dbd-{data_source}-prepared", digest=digest[:32])


@contextmanager
def _without_type_hint_advice() -> Iterator[None]:
    """Drop MLflow's advice to type-hint the pyfunc's predict (shown when dbdgan.serving is first imported):
    the signature is given explicitly. MLflow shows it under its own `simplefilter("once")`, which overrides
    any filter of ours, so it is dropped where warnings are shown; every other warning passes."""
    shown = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if "Add type hints to the `predict` method" not in str(message):
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _new_version(client: Any, name: str, role: str, model_path: Path, payload: dict[str, Any],
                 metrics: dict[str, float], tags: dict[str, str], facts: CardFacts) -> Any:
    """Log the pyfunc under the training run and register it, tagged incomplete until the whole call is done.

    The run gets the dataset as its training input and the model card; the logged model gets the evaluation
    metrics (linked to that dataset); the version gets the description.
    """
    import mlflow

    from dbdgan.aliases import INCOMPLETE, REGISTRATION_TAG

    card = model_card(facts)
    run_id = _training_run(client, tags["training_run_id"] or None)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"register_{role}"):
        if run_id is None:  # a training run has its own lineage tags (tracking.stage_run)
            mlflow.set_tags(run_lineage_tags(facts.lineage))
        dataset = training_dataset(facts.manifest, facts.data_source, facts.manifest_sha256)
        mlflow.log_input(dataset, context="training")
        with _without_type_hint_advice(), quiet_download():  # the download: checking the input example
            info = _log_pyfunc(model_path, card)
        mlflow.log_metrics({f"eval.{k}": v for k, v in metrics.items()}, model_id=info.model_id, dataset=dataset)
        mlflow.log_text(card, f"model_card/{role}.md")
    version = mlflow.register_model(info.model_uri, name, tags={**tags, REGISTRATION_TAG: INCOMPLETE})
    return client.update_model_version(name, version.version, description=description(facts))


def _undo(client: Any, written: list[tuple[str, str]], existed: dict[str, bool]) -> None:
    """Best effort: delete the versions a failed call created; what cannot be deleted stays tagged incomplete,
    which the gate and `promote` refuse."""
    for name, version in reversed(written):
        try:
            client.delete_model_version(name, version)
            if not existed[name] and not client.search_model_versions(f"name='{name}'"):
                client.delete_registered_model(name)
        except Exception as exc:  # noqa: BLE001 - the server may be gone; the original error matters more
            log.warning("could not undo version %s of %s (%s: %s); it stays tagged incomplete", version, name,
                        type(exc).__name__, exc)


def register_models(params: Params, models: dict[str, Path], names: ModelNames, metrics_dir: Path,
                    manifest: Path, tracking: Tracking, teacher_source: str = "") -> dict[str, Any]:
    """`models` maps role (teacher, student) -> model file, registered under `names` of that role.

    teacher_source: where the teacher came from when it was not trained in this run (an earlier registered
    version, an s3:// or file URI); the student's version records it, with the teacher file's sha256.

    Each model is logged as a pyfunc under its training run, registered as a new version with provenance and
    metric tags, and aliased `challenger`; the student then goes through the promotion gate.

    All or nothing: every service is reached before the first write; registrations of the same names take
    turns (a lock in the registry); a rerun with the same model files and metrics reuses their versions; a
    failure part-way deletes the versions this call created, or leaves them tagged `registration=incomplete`
    (which the gate and `promote` refuse) when even that fails.
    """
    from mlflow import MlflowClient

    from dbdgan.aliases import CHALLENGER, COMPLETE, REGISTRATION_TAG, run_gate
    from dbdgan.gate import MANIFEST_TAG, METRIC_PREFIX, PROTOCOL_TAG, gate_params
    from dbdgan.registry_lock import REGISTER_LOCK_SUFFIX, registry_lock

    experiment_id = configure(tracking, params.register.service_timeout_s)
    client = MlflowClient()
    unknown = sorted(set(models) - {"teacher", "student"})
    if unknown:
        raise ValueError(f"roles {unknown} are neither 'teacher' nor 'student'")
    code = lineage.current()  # this step's code: in a pod, the commit baked into the image
    common_tags = {MANIFEST_TAG: manifest_file.sha256(manifest), **code.tags(),
                   "params_hash": params_hash(params), "teacher_preset": params.model.teacher,
                   "student_preset": params.model.student}
    # read every input first, so a missing metrics file cannot leave half of the models registered
    inputs = {role: (read_model_file(path), *_read_evaluation(metrics_dir, role, params))
              for role, path in models.items()}
    planned = {role: (getattr(names, role), models[role], payload, metrics, {
        **common_tags, "role": role, "preset": payload["arch"],
        "arch_kwargs": json.dumps(payload["arch_kwargs"], sort_keys=True, default=str)[:4000],
        "model_sha256": file_sha256(models[role]),
        "training_run_id": training_run_id(client, models[role], payload["metadata"]) or "",
        PROTOCOL_TAG: protocol, **{f"{METRIC_PREFIX}{k}": f"{v:.10g}" for k, v in metrics.items()}})
        for role, (payload, metrics, protocol) in inputs.items()}
    if "student" in planned and "teacher" in models:  # the student's lineage names the teacher it learnt from
        planned["student"][4]["teacher_sha256"] = planned["teacher"][4]["model_sha256"]
        if teacher_source:
            planned["student"][4]["teacher_source"] = teacher_source
    existed = _preflight(client, experiment_id, [entry[0] for entry in planned.values()])
    baselines = _baselines(metrics_dir)
    result: dict[str, Any] = {}
    written: list[tuple[str, str]] = []  # versions this call created, undone if it fails part-way
    with ExitStack() as locks:  # registrations of the same names, e.g. racing on one sqlite store, take turns
        for name in sorted(existed):
            locks.enter_context(registry_lock(name, client, suffix=REGISTER_LOCK_SUFFIX))
        try:
            for role, (name, model_path, payload, metrics, tags) in planned.items():
                version = _same_version(client, name, tags)
                if version is None:
                    facts = CardFacts(
                        name=name, role=role, arch=payload["arch"], data_source=params.data.source, manifest=manifest,
                        manifest_sha256=tags[MANIFEST_TAG], metrics=metrics, protocol=json.loads(tags[PROTOCOL_TAG]),
                        input_size=payload["metadata"].get("input_size"),
                        teacher_arch=(inputs["teacher"][0]["arch"] if "teacher" in inputs else params.model.teacher)
                        if role == "student" else None, baselines=baselines,
                        teacher_source=tags.get("teacher_source", ""),
                        champion=_champion(client, name), lineage=code)
                    version = _new_version(client, name, role, model_path, payload, metrics, tags, facts)
                    written.append((name, version.version))
                else:
                    log.info("%s: version %s already holds this model file (sha256 %s...); reusing it, "
                             "not registering a copy", name, version.version, tags["model_sha256"][:12])
                result[role] = {"name": name, "version": int(version.version), "run_id": version.run_id,
                                "model_uri": f"models:/{name}/{version.version}", "arch": payload["arch"],
                                "metrics": metrics, "reused": (name, version.version) not in written}
            for entry in result.values():  # every version exists: only now are they complete and challengers
                client.set_model_version_tag(entry["name"], str(entry["version"]), REGISTRATION_TAG, COMPLETE)
                client.set_registered_model_alias(entry["name"], CHALLENGER, str(entry["version"]))
        except BaseException:
            _undo(client, written, existed)
            raise
    if "student" in result:
        entry = result["student"]
        entry["gate"] = run_gate(entry["name"], entry["version"], gate_params(params.register))
    return result
