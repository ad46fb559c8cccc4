"""The evaluate step: model files -> metrics beside the baselines, efficiency, ONNX parity, MLflow artifacts."""

from __future__ import annotations

import csv
import json

import mlflow
import pytest
import torch
from pipeline_fixtures import artifact, tiny_params, tiny_tracking

from dbdgan import steps
from dbdgan.checkpoint import save_model_file
from dbdgan.evaluation.scores import HEADLINE, read_scores
from dbdgan.models import create_model


@pytest.fixture()
def prepared_with_models(tmp_path):
    params = tiny_params()
    steps.prepare(params, out=artifact(tmp_path, "dataset"))
    mlflow.set_tracking_uri(tiny_tracking(tmp_path).resolved_uri)
    run_id = mlflow.MlflowClient().create_run(
        mlflow.MlflowClient().create_experiment("eval-test", artifact_location=(tmp_path / "art").as_uri())
    ).info.run_id
    torch.manual_seed(0)
    for role, arch in (("teacher", "teacher_tiny"), ("student", "mobile_tiny")):
        save_model_file(tmp_path / "models" / f"{role}.pt", arch, {}, create_model(arch),
                        {"mlflow_run_id": run_id, "input_size": 48})
    return params, run_id


def test_evaluate_writes_metrics_baselines_onnx_and_logs_to_the_training_run(tmp_path, prepared_with_models):
    params, run_id = prepared_with_models
    params.evaluate.int8 = True
    models = {"teacher": artifact(tmp_path, "teacher"), "student": artifact(tmp_path, "student")}
    results = steps.evaluate(params, dataset=artifact(tmp_path, "dataset"), out=artifact(tmp_path, "scores"),
                             **models, tracking=tiny_tracking(tmp_path))
    assert set(results) == {"teacher", "student", "teacher_int8", "student_int8", "baseline_all_blurred",
                            "baseline_laplacian"}
    delta = results["student"]["int8_delta"]
    assert delta["max_f"] == pytest.approx(results["student_int8"]["max_f"] - results["student"]["max_f"])
    assert abs(delta["mae"]) < 0.2
    metrics_dir = tmp_path / "metrics"
    for role in ("teacher", "student"):
        # the DVC metric holds the headline numbers only; the rest of the accuracy and the timings have files
        # of their own, and read_scores sees all three as one
        written = json.loads((metrics_dir / f"{role}.json").read_text())
        assert sorted(written) == sorted(HEADLINE)
        assert 0.0 <= written["max_f"] <= 1.0 and 0.0 <= written["infocus_max_f"] <= 1.0
        details = json.loads((metrics_dir / "details" / f"{role}.json").read_text())
        assert details["settings"]["split"] == "test" and "efficiency" not in details and "onnx" not in details
        machine = json.loads((metrics_dir / "efficiency" / f"{role}.json").read_text())
        assert machine["efficiency"]["params"] > 0 and machine["efficiency"]["omp_wait_policy"]
        assert machine["onnx"]["max_abs_diff"] < 1e-4 and machine["onnx"]["map_max_abs_diff"] < 1e-4
        assert read_scores(metrics_dir, role) == {**written, **details, **machine} == {
            k: v for k, v in results[role].items()}
        assert (metrics_dir / "onnx" / f"{role}.onnx").is_file()
    blurred = json.loads((metrics_dir / "baseline_all_blurred.json").read_text())
    with open(tmp_path / "data" / "prepared" / "manifest.csv", newline="") as handle:
        test_rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    in_focus = sum(1.0 - float(row["blur_fraction"]) for row in test_rows) / len(test_rows)
    assert blurred["mae"] == pytest.approx(in_focus, abs=1e-3)  # an all-blurred map errs on every sharp pixel
    for png in ("curves.png", "grid.png"):
        assert (metrics_dir / "plots" / png).stat().st_size > 1000
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
    assert {"evaluation/teacher.json", "evaluation/student.json", "evaluation/grid.png"} <= logged
    assert {"evaluation/details/student.json", "evaluation/efficiency/student.json"} <= {
        a.path for folder in ("details", "efficiency")
        for a in mlflow.MlflowClient().list_artifacts(run_id, f"evaluation/{folder}")}


def test_evaluate_scores_a_raw_folder_with_inverted_polarity(tmp_path, prepared_with_models):
    """A raw `folder` dataset whose masks paint in-focus white is normalised before scoring."""
    import numpy as np
    from PIL import Image

    params, _ = prepared_with_models
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(raw / "images" / f"p{i}.png")
        sharp_white = np.zeros((40, 56), np.uint8)
        sharp_white[:, : 14 * (i + 1)] = 255  # in focus on the left
        Image.fromarray(sharp_white).save(raw / "masks" / f"p{i}.png")
    out = tmp_path / "raw_metrics"
    results = steps.evaluate(params, dataset=raw, out=out, student=tmp_path / "models" / "student.pt",
                             tracking=tiny_tracking(tmp_path), layout="folder", polarity="sharp-white")
    assert results["student"]["n_images"] == 4
    blurred = json.loads((out / "baseline_all_blurred.json").read_text())
    expected_in_focus = np.mean([14 * (i + 1) / 56 for i in range(4)])
    assert blurred["mae"] == pytest.approx(expected_in_focus, abs=1e-3)
