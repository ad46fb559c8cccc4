"""A registered version a reviewer can decide from, against a real MLflow store (sqlite in tmp): description
beside the champion's numbers, a model card, metrics on the logged model and the dataset as the run's input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from test_registry import make_workspace

from dbdgan.registration import register_models
from dbdgan.tracking import ModelNames


def _evaluation(path: Path, infocus_max_f: float, mae: float, params: int | None = 120_000) -> None:
    """A metrics JSON with the keys the evaluate step writes (flat infocus_*, efficiency, settings)."""
    data = {"max_f": infocus_max_f + 0.1, "infocus_max_f": infocus_max_f, "infocus_mean_f": infocus_max_f - 0.05,
            "mae": mae, "n_images": 4,
            "settings": {"split": "test", "beta2": 0.3, "adaptive_factor": 1.5, "thresholds": 256,
                         "flip_tta": False, "input_size": [48, 48]}}
    if params:
        data["efficiency"] = {"params": params, "gflops": 0.05, "latency_ms_b1": 5.0, "input_size": 64}
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """Version 1 (promoted by the gate: no champion yet), then version 2 of other weights beside it."""
    root = tmp_path_factory.mktemp("card")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        params, models, run_id, manifest, tracking = make_workspace(root)
        manifest.write_text("id,split,image,mask\na,train,images/a.jpg,masks/a.png\nb,val,images/b.jpg,masks/b.png\n"
                            "c,test,images/c.jpg,masks/c.png\n")
        metrics = root / "metrics"
        _evaluation(metrics / "student.json", 0.71, 0.12)
        _evaluation(metrics / "teacher.json", 0.74, 0.10, params=400_000)
        _evaluation(metrics / "baseline_laplacian.json", 0.52, 0.30, params=None)
        _evaluation(metrics / "baseline_all_blurred.json", 0.33, 0.41, params=None)
        first = register_models(params, models, ModelNames(), metrics, manifest, tracking)
        _, models2, _, _, _ = make_workspace(root / "second", seed=1)
        _evaluation(metrics / "student.json", 0.75, 0.11)
        second = register_models(params, models2, ModelNames(), metrics, manifest, tracking)
        yield {"client": MlflowClient(tracking.resolved_uri), "first": first, "second": second,
               "manifest": manifest, "run_id": run_id, "uri": tracking.resolved_uri}


def test_first_version_is_champion_and_the_second_says_how_it_compares(two_versions):
    client = two_versions["client"]
    assert two_versions["first"]["student"]["gate"]["result"] == "promoted"
    first = client.get_model_version("dbd-student", "1")
    assert "No champion yet" in first.description
    second = client.get_model_version("dbd-student", str(two_versions["second"]["student"]["version"]))
    text = second.description
    assert "mobile_tiny" in text and "teacher_tiny teacher" in text and "synthetic" in text
    assert "in-focus max-F 0.750 (champion v1: 0.710, +0.040)" in text
    assert "MAE 0.110 (champion v1: 0.120, -0.010)" in text
    assert "Laplacian-energy sharpness map: in-focus max-F 0.520, MAE 0.300" in text
    sha = hashlib.sha256(two_versions["manifest"].read_bytes()).hexdigest()
    assert sha[:12] in text and "1 test, 1 train, 1 val" in text


def test_model_card_ships_with_the_model_and_the_run(two_versions, tmp_path):
    mlflow.set_tracking_uri(two_versions["uri"])
    local = Path(mlflow.artifacts.download_artifacts("models:/dbd-student/2", dst_path=str(tmp_path)))
    (card_file,) = local.rglob("model_card.md")
    card = card_file.read_text()
    sha = hashlib.sha256(two_versions["manifest"].read_bytes()).hexdigest()
    for section in ("## Intended use", "## Training data", "## Metrics", "## Efficiency", "## Limitations"):
        assert section in card
    assert sha in card and "Laplacian-energy sharpness map" in card and "champion v1" in card
    assert "| in-focus max-F | 0.750 | 0.520 | 0.330 | 0.710 | higher |" in card
    assert "not meant for them" in card  # synthetic data: the limitation says so
    run = two_versions["client"].get_run(two_versions["second"]["student"]["run_id"])
    names = [a.path for a in two_versions["client"].list_artifacts(run.info.run_id, "model_card")]
    assert names == ["model_card/student.md"]


def test_metrics_belong_to_the_logged_model_and_the_data_is_the_run_input(two_versions):
    client = two_versions["client"]
    version = client.get_model_version("dbd-student", "1")
    # the version's source is its logged model, models:/<model_id> (a sqlite store leaves version.model_id empty)
    logged = client.get_logged_model(version.model_id or version.source.removeprefix("models:/"))
    by_key = {m.key: m for m in logged.metrics}
    assert by_key["eval.infocus_max_f"].value == pytest.approx(0.71)
    assert by_key["eval.mae"].value == pytest.approx(0.12)
    sha = hashlib.sha256(two_versions["manifest"].read_bytes()).hexdigest()
    assert by_key["eval.mae"].dataset_digest == sha[:32]
    run = client.get_run(two_versions["run_id"])
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "dbd-synthetic-prepared"
    assert dataset_input.dataset.digest == sha[:32]
    assert {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"] == "training"
    assert json.loads(dataset_input.dataset.source)["uri"] == str(two_versions["manifest"].resolve())
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == 3
