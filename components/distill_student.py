"""Component: distil the student from the frozen teacher -> student Model."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from dbdgan_kfp.components.factory import component


@component
def distill_student(params: str, mlflow_tracking_uri: str, experiment: str, dataset: Input[Dataset],
                    teacher: Input[Model], student: Output[Model], metrics: Output[Metrics],
                    init: Input[Model] | None = None, workspace: str = "", task: str = "distill_student",
                    nproc: int = 1) -> None:
    """Distil the student (dbdgan.steps.distill_student), tracked in MLflow.

    init: a student to start from (synthetic pre-training), else random initialisation. workspace: the run's
    workspace, where `last.pt` survives a retry (under checkpoints/<task>). nproc: processes (one per GPU).
    """
    from pathlib import Path

    from dbdgan import steps
    from dbdgan.training.runtime import launch
    from dbdgan_kfp.components import _runtime as rt

    run_params = rt.load_params(params)
    result = launch(nproc, steps.distill_student, run_params, dataset=Path(dataset.path),
                    teacher=Path(teacher.path), out=Path(student.path), checkpoints=rt.checkpoints(workspace, task),
                    tracking=rt.tracking(mlflow_tracking_uri, experiment),
                    init=Path(init.path) if init else None)
    student.metadata["teacher_source"] = teacher.metadata.get("source", "")
    rt.report_training(result, metrics, student, run_params.model.student)
