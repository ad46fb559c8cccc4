"""Component: adversarial teacher training on the prepared Dataset -> teacher Model."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from dbdgan_kfp.components.factory import component


@component
def train_teacher(params_yaml: str, overrides: list, mlflow_tracking_uri: str, experiment: str,
                  dataset: Input[Dataset], teacher: Output[Model], metrics: Output[Metrics],
                  init: Input[Model] | None = None) -> None:
    """Train the teacher against D1 (dbdgan.steps.train_teacher), tracked in MLflow.

    init: a teacher to start from (synthetic pre-training), else random initialisation.
    """
    from pathlib import Path

    from dbdgan import steps
    from dbdgan_kfp.components import _runtime as rt

    params = rt.load_params(params_yaml, overrides)
    result = steps.train_teacher(params, dataset=Path(dataset.path), out=Path(teacher.path),
                                 checkpoints=rt.scratch("teacher-checkpoints"),
                                 tracking=rt.tracking(mlflow_tracking_uri, experiment),
                                 init=Path(init.path) if init else None)
    rt.report_training(result, metrics, teacher, params.model.teacher)
