"""The pipeline steps, one plain function each: the CLI, DVC stages and KFP components all call these.

Each takes its hyperparameters (`params`), its inputs and its output by their artifact names in
`dbdgan.graph.STEPS` (`dataset`, `teacher`, ..., and `out`), and the other arguments its row there declares
(`graph.Step.arguments`: where it tracks and registers, `tracking` and `names`, and its options), which
`call` (below) passes and nothing else. Nothing here reads a path from params.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbdgan.config import Params
from dbdgan.io_utils import atomic_write_json
from dbdgan.tracking import ModelNames, Tracking

if TYPE_CHECKING:
    from dbdgan.evaluation.extra import ExtraDataset
    from dbdgan.graph import Step


def call(one: Step, params: Params, **given: Any) -> Any:
    """Run step `one`'s function (the one of its name here) with `given`, which holds only arguments the step
    declares (`Step.arguments`; None: the function's own default). Anything else is an error that names the
    step and the argument. The runner lives with the functions, so the table (dbdgan.graph) imports none."""
    undeclared = [key for key in given if not one.takes(key)]
    if undeclared:
        raise TypeError(f"step {one.name} takes no argument {', '.join(map(repr, undeclared))}; it takes "
                        f"{', '.join(one.arguments)} (declared in dbdgan.graph.STEPS)")
    return globals()[one.name](params, **{key: value for key, value in given.items() if value is not None})


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
    """Great Expectations checks on a prepared folder, report in `out`; raises DataCheckError on failure."""
    from dbdgan.data.checks import validate_dataset

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


@contextmanager
def _raw_as_prepared(params: Params, layout: str, folder: Path, polarity: str | None) -> Iterator[Path]:
    """A raw dataset folder read through prepare's readers (masks normalised to 1 = blurred) into a temporary
    prepared folder, every image in its test split: how evaluate scores a dataset whole."""
    from dbdgan.data.prepare import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="dbdgan-eval-") as tmp:
        prepared = Path(tmp) / "prepared"
        prepare_dataset(layout, prepared, input_dir=Path(folder), polarity=polarity, seed=params.seed,
                        split={"test": 1.0}, synthetic=None, max_pixels=params.data.max_pixels)
        yield prepared


def evaluate(params: Params, dataset: Path, out: Path, teacher: str | Path | None = None,
             student: str | Path | None = None, models: Mapping[str, str | Path] | None = None,
             tracking: Tracking = Tracking(), split: str | None = None, layout: str | None = None,
             polarity: str | None = None, extra: Sequence[ExtraDataset] = ()) -> dict[str, dict[str, Any]]:
    """Accuracy, efficiency and ONNX parity of each model (file or MLflow URI) on a split of `dataset`.

    `teacher`, `student` and `models` (name -> file or URI) together name the models. With `layout` (cuhk,
    dut, szu, folder), `dataset` is a raw dataset folder: it is read through the same readers as `prepare`
    (polarity normalised) into a temporary folder and every image is scored. The splits of
    evaluate.extra_splits (of a prepared `dataset`) and each `extra` dataset (read the same way) are scored
    beside it: their numbers go under `<label>.` in each model's details, an extra dataset's files under
    `out/extra/<label>/`.
    """
    from dbdgan.evaluation.extra import EXTRA_DIR
    from dbdgan.evaluation.report import Beside, evaluate_files

    named = {**({"teacher": teacher} if teacher else {}), **({"student": student} if student else {}),
             **dict(models or {})}
    if not named:
        raise ValueError("evaluate: no models given")
    with ExitStack() as stack:
        if layout is None:
            split = split or params.evaluate.split
            beside = [Beside(name, Path(dataset), name) for name in params.evaluate.extra_splits if name != split]
        else:
            dataset, split = stack.enter_context(_raw_as_prepared(params, layout, Path(dataset), polarity)), "test"
            beside = []  # a raw folder has no splits: evaluate.extra_splits do not apply
        for one in extra:
            prepared = stack.enter_context(_raw_as_prepared(params, one.layout, one.path, one.polarity))
            beside.append(Beside(one.label, prepared, "test", Path(out) / EXTRA_DIR / one.label))
        return evaluate_files(named, Path(dataset), Path(out), split=split, params=params, tracking=tracking,
                              beside=beside)


def register(params: Params, dataset: Path, teacher: Path, student: Path, scores: Path, out: Path,
             tracking: Tracking = Tracking(), names: ModelNames = ModelNames(),
             teacher_source: str = "") -> dict[str, Any]:
    """Register teacher and student (alias `challenger`) with their `scores`; the student meets the gate.

    teacher_source: where an imported teacher came from (a registry version or URI), recorded as the
    student's lineage. The summary, written to `out`, holds the gate's decision under
    ["student"]["gate"]["result"].
    """
    from dbdgan.registration import register_models

    result = register_models(params, {"teacher": Path(teacher), "student": Path(student)}, names,
                             metrics_dir=Path(scores), manifest=Path(dataset) / "manifest.csv", tracking=tracking,
                             teacher_source=teacher_source)
    atomic_write_json(out, result)
    return result


def gate_decision(registered: Mapping[str, Any]) -> str:
    """The promotion gate's outcome in a register summary: promoted, passed, rejected or unchanged."""
    return str(registered["student"]["gate"]["result"])
