"""Registration against a real MLflow store (sqlite in tmp): provenance, run link, aliases, the pyfunc."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from pipeline_fixtures import tiny_params, tiny_tracking

from dbdgan.checkpoint import load_model_file, save_model_file
from dbdgan.models import create_model
from dbdgan.predict import blur_maps, load_predictor, predict_paths
from dbdgan.registration import params_hash, register_models
from dbdgan.tracking import ModelNames, configure

GOOD = {"max_f": 0.81, "mae": 0.12}


def write_metrics(path: Path, max_f: float, mae: float, params: int = 120_000, latency_ms: float = 5.0,
                  split: str = "test") -> None:
    """A metrics JSON shaped like the evaluate step's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "max_f": max_f, "mean_f": max_f - 0.05, "adaptive_f": max_f - 0.03, "mae": mae, "iou": 0.6,
        "infocus": {"max_f": 0.7, "mae": mae}, "n_images": 4,
        "settings": {"split": split, "beta2": 0.3, "adaptive_factor": 1.5, "thresholds": 256,
                     "flip_tta": False, "input_size": [48, 48]},
        "efficiency": {"params": params, "latency_ms_b1": latency_ms, "input_size": 64,
                       "allocator": "glibc"}}))


def make_model_file(path: Path, arch: str, run_id: str = "", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    # input_size: the validation size training stores in every model file, which the registry copies
    save_model_file(path, arch, {}, create_model(arch), {"mlflow_run_id": run_id, "epoch": 1, "input_size": 48})
    return path


def make_workspace(root: Path, student_metrics: dict | None = None, training_run: bool = True,
                   seed: int = 0) -> tuple:
    """Params, a sqlite store under `root` (its Tracking), model files by role, metrics and a manifest."""
    params, tracking = tiny_params(), tiny_tracking(root)
    configure(tracking, params.register.service_timeout_s)
    run_id = ""
    if training_run:
        client = MlflowClient()
        exp = mlflow.get_experiment_by_name(tracking.experiment)
        run_id = client.create_run(exp.experiment_id, run_name="distill_student").info.run_id
        client.set_terminated(run_id)
    models = {
        "teacher": make_model_file(root / "models/teacher.pt", "teacher_tiny", seed=seed),
        "student": make_model_file(root / "models/student.pt", "mobile_tiny", run_id, seed),
    }
    write_metrics(root / "metrics/teacher.json", 0.85, 0.1, params=400_000)
    write_metrics(root / "metrics/student.json", **(student_metrics or GOOD))
    manifest = root / "data/prepared/manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("id,split\na,test\n")
    return params, models, run_id, manifest, tracking


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        params, models, run_id, manifest, tracking = make_workspace(root)
        result = register_models(params, models, ModelNames(), root / "metrics", manifest, tracking)
        yield {"root": root, "params": params, "models": models, "run_id": run_id, "result": result,
               "client": MlflowClient(tracking.resolved_uri), "tracking": tracking}


def test_versions_tags_aliases_and_run_link(registered):
    client, params, result = registered["client"], registered["params"], registered["result"]
    student = client.get_model_version_by_alias("dbd-student", "challenger")
    assert int(student.version) == result["student"]["version"] == 1
    assert student.run_id == registered["run_id"] == result["student"]["run_id"]
    tags = student.tags
    manifest = registered["root"] / "data/prepared/manifest.csv"
    import hashlib

    assert tags["dataset_manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert tags["params_hash"] == params_hash(params)
    assert len(tags["git_commit"]) in (40, 7) or tags["git_commit"] == "unknown"
    assert tags["preset"] == "mobile_tiny" and tags["student_preset"] == params.model.student
    assert tags["teacher_preset"] == params.model.teacher and tags["role"] == "student"
    assert float(tags["metric.max_f"]) == pytest.approx(0.81)
    assert float(tags["metric.efficiency.params"]) == 120_000
    assert float(tags["metric.infocus.max_f"]) == pytest.approx(0.7)
    assert json.loads(tags["eval_protocol"])["split"] == "test"
    assert "metric.settings.beta2" not in tags
    teacher = client.get_model_version_by_alias("dbd-teacher", "challenger")
    assert teacher.tags["preset"] == "teacher_tiny" and teacher.tags["role"] == "teacher"
    assert teacher.run_id and teacher.run_id != registered["run_id"]  # no training run recorded: a new one
    run = client.get_run(registered["run_id"])
    assert run.data.metrics["eval.max_f"] == pytest.approx(0.81)


def test_lineage_of_the_image_reaches_the_tags_the_runs_and_the_model_card(tmp_path, monkeypatch):
    """In a pod there is no git: the commit baked into the image, its reference and the Kubeflow run id are
    on each version, on its run (the training run's own for the student, a register run for the teacher)
    and in its model card."""
    from dbdgan import lineage
    from dbdgan.tracking import stage_run

    commit, image = "0123456789abcdef0123456789abcdef01234567", "registry.example.com/ml/dbdgan:0.1.0-g0123456789"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, value in ((lineage.COMMIT_ENV, commit), (lineage.DIRTY_ENV, "0"), (lineage.IMAGE_ENV, image),
                        (lineage.PIPELINE_RUN_ENV, "run-7")):
        monkeypatch.setenv(name, value)
    params, models, _, manifest, tracking = make_workspace(tmp_path, training_run=False)
    with stage_run(params, "distill_student", tracking) as run:
        make_model_file(models["student"], "mobile_tiny", run.info.run_id)
    register_models(params, models, ModelNames(), tmp_path / "metrics", manifest, tracking)

    client = MlflowClient(tracking.resolved_uri)
    expected = {"git_commit": commit, "git_dirty": "false", "image": image, "pipeline_run_id": "run-7"}
    for name in ("dbd-teacher", "dbd-student"):
        version = client.get_model_version_by_alias(name, "challenger")
        assert {key: version.tags.get(key) for key in expected} == expected
        run_tags = client.get_run(version.run_id).data.tags
        assert {key: run_tags.get(f"dbdgan.{key}") for key in expected} == expected
        assert run_tags["mlflow.source.git.commit"] == commit
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}",
                                                         dst_path=str(tmp_path / name)))
        card = next(local.rglob("model_card.md")).read_text()
        assert f"git commit `{commit}`\n" in card and f"image: `{image}`" in card and "run: `run-7`" in card


def test_student_goes_through_the_gate_and_the_decision_is_recorded(registered):
    client, result = registered["client"], registered["result"]
    gate = result["student"]["gate"]
    assert gate["result"] == "promoted" and gate["mode"] == "floors"
    assert int(client.get_model_version_by_alias("dbd-student", "champion").version) == 1
    recorded = json.loads(client.get_model_version("dbd-student", "1").tags["decision"])
    assert recorded["action"] == "gate" and recorded["user"] and recorded["time"]
    assert recorded["metrics"]["candidate"]["max_f"] == pytest.approx(0.81)
    assert "gate" not in result["teacher"]
    assert "champion" not in client.get_registered_model("dbd-teacher").aliases


def test_pyfunc_takes_arrays_bytes_and_dataframes(registered):
    model = mlflow.pyfunc.load_model("models:/dbd-student@champion")
    assert model.metadata.get_input_schema() is not None and model.metadata.saved_input_example_info
    assert {spec.name: spec.default for spec in model.metadata.get_params_schema().params} == {
        "output": "png", "max_side": 0}
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 40, 52, 3), dtype=np.uint8)
    records = model.predict(batch, params={"output": "float"})
    maps = np.stack([record["map"] for record in records])
    assert maps.shape == (2, 40, 52) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    expected = blur_maps(load_model_file(registered["models"]["student"]), list(batch), input_size=48)
    np.testing.assert_allclose(maps, np.stack(expected), atol=1e-5)

    other = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    mixed = np.empty(2, dtype=object)
    mixed[0], mixed[1] = png_bytes(batch[0]), other
    ragged = model.predict(mixed, params={"output": "float"})
    assert [record["map"].shape for record in ragged] == [(40, 52), (30, 20)]
    np.testing.assert_allclose(ragged[0]["map"], maps[0], atol=1e-5)

    grey = png_bytes(batch[1][:, :, 0])
    [record] = model.predict(pd.DataFrame({"image": [grey]}))  # default: the 8-bit map as a PNG
    with Image.open(io.BytesIO(base64.b64decode(record["map"]))) as png:
        assert png.size == (52, 40) and png.mode == "L"


def test_pyfunc_rejects_bad_input_clearly(registered):
    model = mlflow.pyfunc.load_model("models:/dbd-student@champion")
    with pytest.raises(Exception, match="not a readable image"):
        model.predict(np.array([b"not an image"], dtype=object))
    with pytest.raises(Exception, match=r"\[H,W,3\]"):
        model.predict(np.zeros((4, 5), dtype=np.uint8))


def test_predict_from_the_registered_champion(registered, tmp_path):
    """models:/NAME@ALIAS: artifacts downloaded, weights loaded with weights_only=True, stored input size."""
    loaded = load_predictor("models:/dbd-student@champion")
    assert loaded.input_size in (48, (48, 48))
    reference = load_model_file(registered["models"]["student"])
    for ours, theirs in zip(loaded.model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)))
    summary = predict_paths([image], "models:/dbd-student@champion", tmp_path / "out", progress=False)
    assert summary["written"] == 1 and summary["input_size"] in (48, (48, 48))
    with Image.open(tmp_path / "out/photo_blur.png") as blur:
        assert blur.size == (70, 50)
    with pytest.raises(ValueError, match="cannot download model 'models:/dbd-student@nope'"):
        load_predictor("models:/dbd-student@nope")


def test_missing_or_broken_metrics_are_clear_errors(registered, tmp_path):
    params, models = registered["params"], registered["models"]
    manifest = registered["root"] / "data/prepared/manifest.csv"
    write_metrics(tmp_path / "teacher.json", 0.8, 0.1)
    with pytest.raises(FileNotFoundError, match="student.json"):
        register_models(params, models, ModelNames(), tmp_path, manifest, registered["tracking"])
    (tmp_path / "student.json").write_text(json.dumps({"mae": 0.1}))
    with pytest.raises(ValueError, match="lacks max_f"):
        register_models(params, models, ModelNames(), tmp_path, manifest, registered["tracking"])
    with pytest.raises(ValueError, match="neither"):
        register_models(params, {"someone-else": models["student"]}, ModelNames(), tmp_path, manifest,
                        registered["tracking"])
    assert len(registered["client"].search_model_versions("name='dbd-teacher'")) == 1  # nothing half-done
