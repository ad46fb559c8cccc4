"""The pipeline steps, one plain function each: the CLI, DVC stages and KFP components all call these."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from dbdgan.config import Params
from dbdgan.io_utils import atomic_write_json

log = logging.getLogger(__name__)


def prepare(params: Params, out_dir: str | Path | None = None) -> Path:
    """Raw data (synthetic or a real layout) -> prepared folder with manifest.csv; returns the manifest path."""
    from dbdgan.data.prepare import prepare_dataset

    data = params.data
    return prepare_dataset(
        data.source, Path(out_dir or data.prepared_dir),
        input_dir=Path(data.input) if data.input else None, polarity=data.polarity, seed=params.seed,
        split=data.split.model_dump(), synthetic=data.synthetic, max_pixels=data.max_pixels,
    )


def validate(params: Params, data_dir: str | Path | None = None, report_dir: str | Path | None = None) -> Any:
    """Great Expectations checks on a prepared folder; raises DataValidationError naming each failure."""
    from dbdgan.data.validation import validate_dataset

    return validate_dataset(Path(data_dir or params.data.prepared_dir), Path(report_dir or params.data.report_dir),
                            min_size=params.data.min_size, max_pixels=params.data.max_pixels)


def train_teacher(params: Params, data_dir: str | Path | None = None, out_path: str | Path | None = None,
                  checkpoint_dir: str | Path | None = None) -> dict[str, Any]:
    from dbdgan.training.teacher import train_teacher as run

    return run(params, data_dir=data_dir, out_path=out_path, checkpoint_dir=checkpoint_dir)


def distill_student(params: Params, teacher_path: str | Path | None = None, data_dir: str | Path | None = None,
                    out_path: str | Path | None = None, checkpoint_dir: str | Path | None = None) -> dict[str, Any]:
    from dbdgan.training.student import distill_student as run

    return run(params, teacher_path=teacher_path or params.train_teacher.out, data_dir=data_dir, out_path=out_path,
               checkpoint_dir=checkpoint_dir)


def evaluate(params: Params, models: dict[str, str | Path] | None = None, data_dir: str | Path | None = None,
             out_dir: str | Path | None = None, split: str | None = None, layout: str | None = None,
             polarity: str | None = None) -> dict[str, dict[str, Any]]:
    """Accuracy, efficiency and ONNX parity of each model (file or MLflow URI) on a prepared split.

    With `layout` (cuhk, dut, szu, folder), `data_dir` is a raw dataset folder: it is read through the same
    readers as `prepare` (polarity normalised) into a temporary folder and every image is scored.
    """
    from dbdgan.evaluation.report import evaluate_files

    ev = params.evaluate
    models = dict(models or {"teacher": params.train_teacher.out, "student": params.distill_student.out})
    out = Path(out_dir or ev.out_dir)
    if layout is None:
        return evaluate_files(models, Path(data_dir or params.data.prepared_dir), out, split=split or ev.split,
                              params=params)
    if data_dir is None:
        raise ValueError("evaluate with a layout needs --data pointing at the raw dataset folder")
    from dbdgan.data.prepare import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="dbdgan-eval-") as tmp:
        prepared = Path(tmp) / "prepared"
        prepare_dataset(layout, prepared, input_dir=Path(data_dir), polarity=polarity, seed=params.seed,
                        split={"test": 1.0}, synthetic=None, max_pixels=params.data.max_pixels)
        return evaluate_files(models, prepared, out, split="test", params=params)


def register(params: Params, metrics_dir: str | Path | None = None, out_path: str | Path | None = None,
             data_dir: str | Path | None = None) -> dict[str, Any]:
    """Log teacher and student as MLflow models, register a version of each with its metrics."""
    from dbdgan.registry import register_models

    reg = params.register
    result = register_models(
        params,
        models={reg.teacher_name: Path(params.train_teacher.out), reg.student_name: Path(params.distill_student.out)},
        metrics_dir=Path(metrics_dir or params.evaluate.out_dir),
        manifest=Path(data_dir or params.data.prepared_dir) / "manifest.csv",
    )
    atomic_write_json(out_path or reg.out, result)
    return result
