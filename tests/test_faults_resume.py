"""Issue 13, resume: a checkpoint is resumed only by the run that made it (same params, epochs, code, data),
and a checkpoint's MLflow run that the store no longer has starts a new run instead of failing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pipeline_fixtures import tiny_params

from dbdgan import checkpoint, steps
from dbdgan.checkpoint import code_version, resume_key, resume_mismatch
from dbdgan.tracking import Tracking


def _params(epochs: int):
    return tiny_params([f"train_teacher.epochs={epochs}"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "prepared"
    steps.prepare(_params(1), out=out)
    return out


def _train(dataset: Path, root: Path, epochs: int, store: str = "mlflow.db") -> dict:
    tracking = Tracking(uri=f"sqlite:///{root / store}", artifact_location=str(root / "artifacts"))
    return steps.train_teacher(_params(epochs), dataset=dataset, out=root / "teacher.pt",
                               checkpoints=root / "checkpoints", tracking=tracking)


def _epochs(result: dict) -> list[int]:
    return [row["epoch"] for row in result["history"]]


def test_other_epochs_or_code_start_fresh_and_say_why(dataset: Path, tmp_path: Path, monkeypatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    assert _epochs(_train(dataset, tmp_path, epochs=2)) == [1, 2]
    with caplog.at_level(logging.WARNING, logger="dbdgan.training.engine"):
        shorter = _train(dataset, tmp_path, epochs=1)  # used to "resume after epoch 2" and train nothing
    assert _epochs(shorter) == [1]
    assert "not resuming" in caplog.text and "epochs (so the learning-rate schedule)" in caplog.text
    caplog.clear()
    assert _epochs(_train(dataset, tmp_path, epochs=1)) == []  # the same run again: resumed, nothing to do
    monkeypatch.setattr(checkpoint, "code_version", lambda package=None: "edited-code")
    with caplog.at_level(logging.WARNING, logger="dbdgan.training.engine"):
        assert _epochs(_train(dataset, tmp_path, epochs=1)) == [1]
    assert "training code" in caplog.text


def test_resume_key_covers_inputs_epochs_and_code(tmp_path: Path) -> None:
    key = resume_key("abc", 4)
    assert resume_mismatch(key, resume_key("abc", 4)) == []
    assert resume_mismatch(key, resume_key("abd", 4)) == ["params, data, teacher or init weights"]
    assert resume_mismatch(key, resume_key("abc", 6)) == ["epochs (so the learning-rate schedule)"]
    assert resume_mismatch("abc", key) == ["checkpoint format (written by an older version)"]
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "engine.py").write_text("LR = 1\n")
    before = code_version(package)
    (package / "sub" / "engine.py").write_text("LR = 2\n")
    code_version.cache_clear()
    assert code_version(package) != before


def test_a_checkpoint_whose_mlflow_run_is_gone_starts_a_new_run(dataset: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    first = _train(dataset, tmp_path, epochs=1, store="a.db")
    with caplog.at_level(logging.WARNING, logger="dbdgan.tracking"):
        again = _train(dataset, tmp_path, epochs=1, store="b.db")  # the store was switched
    assert _epochs(again) == []  # the checkpoint itself was resumed
    assert again["mlflow_run_id"] and again["mlflow_run_id"] != first["mlflow_run_id"]
    assert f"MLflow run {first['mlflow_run_id']} of the checkpoint is not in the tracking store" in caplog.text
    store = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'b.db'}")
    assert store.get_run(again["mlflow_run_id"]).data.tags["dbdgan.stage"] == "train_teacher"
