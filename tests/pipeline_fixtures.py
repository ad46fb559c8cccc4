"""Tiny-config helpers shared by the training and pipeline tests (imported by name, not a conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dbdgan import graph
from dbdgan.config import Params, load_params
from dbdgan.tracking import Tracking

REPO = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = [
    "data.synthetic.num_images=24",
    "data.synthetic.size=48",
    "train_teacher.epochs=2",
    "train_teacher.batch_size=4",
    "train_teacher.image_size=48",
    "distill_student.epochs=1",
    "distill_student.batch_size=4",
    "distill_student.image_size=48",
    "evaluate.efficiency_size=64",
    "evaluate.efficiency_runs=1",
    "evaluate.grid_samples=2",
]


def tiny_params(extra: list[str] | None = None) -> Params:
    """Hyperparameters sized so that a whole pipeline runs in well under a minute on 2 cores."""
    return load_params(REPO / "params.yaml", TINY_OVERRIDES + list(extra or []))


def tiny_tracking(root: Path, experiment: str = "dbdgan") -> Tracking:
    """A sqlite MLflow store with its artifacts under `root`."""
    return Tracking(uri=f"sqlite:///{root}/mlflow/mlflow.db", experiment=experiment,
                    artifact_location=str(root / "mlflow" / "artifacts"))


def artifact(root: Path, name: str) -> Path:
    """Where the CLI would put artifact `name` for `--root root`."""
    return root / graph.ARTIFACTS[name].path


def run_step(root: Path, name: str, params: Params, **given: Any) -> Any:
    """Step `name` with every path under `root` (as `dbdgan <step> --root root`), `given` ones replacing them."""
    one = graph.step(name)
    paths: dict[str, Any] = {inp: artifact(root, inp) for inp in one.inputs}
    paths.update({"out": artifact(root, one.output), "tracking": tiny_tracking(root)})
    paths.update({arg: root / default for arg, default in one.scratch})
    return graph.call(one, params, **{**paths, **given})
