"""Tiny-config helpers shared by the training and pipeline tests (imported by name, not a conftest)."""

from __future__ import annotations

from pathlib import Path

from dbdgan.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(root: Path) -> list[str]:
    """Everything under `root`, sized so that a whole pipeline runs in well under a minute on 2 cores."""
    return [
        f"data.prepared_dir={root}/data/prepared",
        f"data.report_dir={root}/reports/validation",
        "data.synthetic.num_images=24",
        "data.synthetic.size=48",
        "train_teacher.epochs=2",
        "train_teacher.batch_size=4",
        "train_teacher.image_size=48",
        f"train_teacher.checkpoint_dir={root}/checkpoints/teacher",
        f"train_teacher.out={root}/models/teacher.pt",
        "distill_student.epochs=1",
        "distill_student.batch_size=4",
        "distill_student.image_size=48",
        f"distill_student.checkpoint_dir={root}/checkpoints/student",
        f"distill_student.out={root}/models/student.pt",
        "evaluate.input_size=48",
        "evaluate.efficiency_size=64",
        "evaluate.efficiency_runs=1",
        "evaluate.grid_samples=2",
        f"evaluate.out_dir={root}/metrics",
        f"register.tracking_uri=sqlite:///{root}/mlflow/mlflow.db",
        f"register.artifact_location={root}/mlflow/artifacts",
        f"register.out={root}/reports/registered.json",
    ]


def tiny_params(root: Path, extra: list[str] | None = None) -> Params:
    return load_params(REPO / "params.yaml", tiny_overrides(root) + list(extra or []))
