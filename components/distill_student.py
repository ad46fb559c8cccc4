"""Component: distil the student from the frozen teacher -> student Model."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from dbdgan_kfp.components.factory import component


@component
def distill_student(params_yaml: str, overrides: list, mlflow_tracking_uri: str, experiment: str,
                    dataset: Input[Dataset], teacher: Input[Model], student: Output[Model],
                    metrics: Output[Metrics], init: Input[Model] | None = None) -> None:
    """Distil the student (dbdgan.steps.distill_student), tracked in MLflow.

    init: a student to start from (synthetic pre-training), else random initialisation.
    """
    from pathlib import Path

    from dbdgan import steps
    from dbdgan_kfp.components import _runtime as rt

    params = rt.load_params(params_yaml, overrides)
    result = steps.distill_student(params, dataset=Path(dataset.path), teacher=Path(teacher.path),
                                   out=Path(student.path), checkpoints=rt.scratch("student-checkpoints"),
                                   tracking=rt.tracking(mlflow_tracking_uri, experiment),
                                   init=Path(init.path) if init else None)
    rt.report_training(result, metrics, student, params.model.student)
