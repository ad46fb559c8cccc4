"""The pipeline steps, one plain function each: the CLI, DVC stages and KFP components all call these.

Each takes its hyperparameters (`params`), its inputs and its output by their artifact names in
`dbdgan.graph.STEPS` (`dataset`, `teacher`, ..., and `out`), and where it tracks and registers (`tracking`,
`names`). Nothing here reads a path from params.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dbdgan.config import Params
from dbdgan.io_utils import atomic_write_json
from dbdgan.tracking import ModelNames, Tracking


def prepare(params: Params, out: Path, raw: Path | None = None) -> Path:
    """Raw data (`raw`, a folder of the data.source layout; none for synthetic) -> prepared folder `out`.

    Returns the manifest path.
    """
    from dbdgan.data.prepare import prepare_dataset

    data = params.data
    if data.source != "synthetic" and raw is None:
        raise ValueError(f"prepare: data.source is {data.source!r}, so it needs the raw dataset folder "
                         "(dbdgan prepare --input FOLDER)")
    return prepare_dataset(data.source, Path(out), input_dir=Path(raw) if raw is not None else None,
                           polarity=data.polarity, seed=params.seed, split=data.split.model_dump(),
                           synthetic=data.synthetic, max_pixels=data.max_pixels)


def validate(params: Params, dataset: Path, out: Path) -> Any:
    """Great Expectations checks on a prepared folder, report in `out`; raises DataValidationError on failure."""
    from dbdgan.data.validation import validate_dataset

    return validate_dataset(Path(dataset), Path(out), min_size=params.data.min_size,
                            max_pixels=params.data.max_pixels)


def train_teacher(params: Params, dataset: Path, out: Path, checkpoints: Path, tracking: Tracking = Tracking(),
                  init: Path | None = None) -> dict[str, Any]:
    """Train the teacher on `dataset`; the best model goes to `out`, resumable state to `checkpoints`."""
    from dbdgan.training.teacher import train_teacher as run

    return run(params, Path(dataset), Path(out), Path(checkpoints), tracking, init=Path(init) if init else None)


def distill_student(params: Params, dataset: Path, teacher: Path, out: Path, checkpoints: Path,
                    tracking: Tracking = Tracking(), init: Path | None = None) -> dict[str, Any]:
    """Distil the student from the `teacher` model file on `dataset`; the best student goes to `out`."""
    from dbdgan.training.student import distill_student as run

    return run(params, Path(dataset), Path(teacher), Path(out), Path(checkpoints), tracking,
               init=Path(init) if init else None)


def evaluate(params: Params, dataset: Path, out: Path, teacher: str | Path | None = None,
             student: str | Path | None = None, models: Mapping[str, str | Path] | None = None,
             tracking: Tracking = Tracking(), split: str | None = None, layout: str | None = None,
             polarity: str | None = None) -> dict[str, dict[str, Any]]:
    """Accuracy, efficiency and ONNX parity of each model (file or MLflow URI) on a split of `dataset`.

    `teacher`, `student` and `models` (name -> file or URI) together name the models. With `layout` (cuhk,
    dut, szu, folder), `dataset` is a raw dataset folder: it is read through the same readers as `prepare`
    (polarity normalised) into a temporary folder and every image is scored.
    """
    from dbdgan.evaluation.report import evaluate_files

    named = {**({"teacher": teacher} if teacher else {}), **({"student": student} if student else {}),
             **dict(models or {})}
    if not named:
        raise ValueError("evaluate: no models given")
    if layout is None:
        return evaluate_files(named, Path(dataset), Path(out), split=split or params.evaluate.split,
                              params=params, tracking=tracking)
    from dbdgan.data.prepare import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="dbdgan-eval-") as tmp:
        prepared = Path(tmp) / "prepared"
        prepare_dataset(layout, prepared, input_dir=Path(dataset), polarity=polarity, seed=params.seed,
                        split={"test": 1.0}, synthetic=None, max_pixels=params.data.max_pixels)
        return evaluate_files(named, prepared, Path(out), split="test", params=params, tracking=tracking)


def register(params: Params, dataset: Path, teacher: Path, student: Path, scores: Path, out: Path,
             tracking: Tracking = Tracking(), names: ModelNames = ModelNames(),
             teacher_source: str = "") -> dict[str, Any]:
    """Register teacher and student (alias `challenger`) with their `scores`; the student meets the gate.

    teacher_source: where an imported teacher came from (a registry version or URI), recorded as the
    student's lineage. The summary, written to `out`, holds the gate's decision under
    ["student"]["gate"]["result"].
    """
    from dbdgan.registry import register_models

    result = register_models(params, {"teacher": Path(teacher), "student": Path(student)}, names,
                             metrics_dir=Path(scores), manifest=Path(dataset) / "manifest.csv", tracking=tracking,
                             teacher_source=teacher_source)
    atomic_write_json(out, result)
    return result


def gate_decision(registered: Mapping[str, Any]) -> str:
    """The promotion gate's outcome in a register summary: promoted, passed, rejected or unchanged."""
    return str(registered["student"]["gate"]["result"])
