"""No duplicates in the registry: an unchanged model file reuses its version, whatever its timings did, and
local trial runs register under names of their own (real sqlite MLflow store)."""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from dbdgan.checkpoint import save_model_file
from dbdgan.config import load_params
from dbdgan.evaluation.scores import write_scores
from dbdgan.models import create_model
from dbdgan.registration import register_models
from dbdgan.tracking import ModelNames, Tracking, configure

REPO = Path(__file__).resolve().parents[1]
NAMES = ModelNames(teacher="dup-teacher", student="dup-student")


def _scores(metrics: Path, role: str, max_f: float, latency_ms: float) -> None:
    """What the evaluate step writes: headline, details and (machine-dependent) efficiency files."""
    write_scores(metrics, role, {"max_f": max_f, "mae": 0.1, "infocus_max_f": 0.7, "n_images": 4,
                                 "settings": {"split": "test", "beta2": 0.3},
                                 "efficiency": {"params": 100_000, "latency_ms_b1": latency_ms}})


def _student(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_model_file(path, "mobile_tiny", {}, create_model("mobile_tiny"), {"epoch": 1, "input_size": 48})
    return path


def _versions(client: MlflowClient, name: str) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))


def test_a_student_only_experiment_leaves_the_teachers_version_count_unchanged(tmp_path, caplog, capfd):
    params = load_params(REPO / "params.yaml", ["register.service_timeout_s=10"])
    tracking = Tracking(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "artifacts"))
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    save_model_file(teacher, "teacher_tiny", {}, create_model("teacher_tiny"), {"epoch": 1, "input_size": 48})
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,split\na,test\n")
    metrics = tmp_path / "metrics"
    _scores(metrics, "teacher", 0.85, latency_ms=30.0)
    _scores(metrics, "student", 0.80, latency_ms=8.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = register_models(params, {"teacher": teacher, "student": _student(tmp_path / "s1.pt", 1)}, NAMES,
                                metrics, manifest, tracking)
    # quiet: no advice about type hints the explicit signature makes moot, no download bar (issue 26)
    assert not [w for w in caught if "Add type hints" in str(w.message)]
    assert "Downloading artifacts" not in capfd.readouterr().err
    # the experiment: a new student; the unchanged teacher re-evaluated on a busier machine (its timing moved)
    _scores(metrics, "teacher", 0.85, latency_ms=95.0)
    _scores(metrics, "student", 0.81, latency_ms=9.0)
    with caplog.at_level(logging.INFO, logger="dbdgan.registration"):
        again = register_models(params, {"teacher": teacher, "student": _student(tmp_path / "s2.pt", 2)}, NAMES,
                                metrics, manifest, tracking)
    configure(tracking, 10)
    client = MlflowClient()
    assert _versions(client, NAMES.teacher) == [1]
    assert again["teacher"]["reused"] and again["teacher"]["version"] == first["teacher"]["version"] == 1
    assert f"{NAMES.teacher}: version 1 already holds this model file" in caplog.text
    assert _versions(client, NAMES.student) == [1, 2] and not again["student"]["reused"]
    assert client.get_registered_model(NAMES.teacher).aliases == {"challenger": 1}


@pytest.mark.parametrize(("flags", "expected"), [
    ([], {"experiment": "dbdgan-local", "teacher_name": "dbd-teacher-local", "student_name": "dbd-student-local"}),
    (["--teacher-name", "dbd-teacher", "--student-name", "dbd-student", "--mlflow-experiment", "dbdgan"],
     {"experiment": "dbdgan", "teacher_name": "dbd-teacher", "student_name": "dbd-student"}),
])
def test_run_local_is_a_trial_under_names_of_its_own_unless_told(flags, expected):
    pytest.importorskip("kfp")
    from dbdgan_kfp.pipelines import cli

    args = cli.build_parser().parse_args(["run-local", *flags])
    trial = cli.local_trial(args)
    assert {key: getattr(trial, arg) for key, arg in (("experiment", "mlflow_experiment"),
                                                      ("teacher_name", "teacher_name"),
                                                      ("student_name", "student_name"))} == expected
    assert isinstance(trial, argparse.Namespace) and json.dumps(vars(trial), default=str)
