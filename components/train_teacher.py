"""Component: adversarial teacher training on the prepared Dataset -> teacher Model."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from dbdgan_kfp.components.factory import component


@component
def train_teacher(params: str, mlflow_tracking_uri: str, experiment: str, dataset: Input[Dataset],
                  teacher: Output[Model], metrics: Output[Metrics], init: Input[Model] | None = None,
                  workspace: str = "", task: str = "train_teacher", nproc: int = 1) -> None:
    """Train the teacher against D1 (dbdgan.steps.train_teacher), tracked in MLflow.

    init: a teacher to start from (synthetic pre-training), else random initialisation. workspace: the run's
    workspace, where `last.pt` survives a retry (under checkpoints/<task>). nproc: processes (one per GPU).
    """
    from pathlib import Path

    from dbdgan import steps
    from dbdgan.training.runtime import launch
    from dbdgan_kfp.components import _runtime as rt

    run_params = rt.load_params(params)
    result = launch(nproc, steps.train_teacher, run_params, dataset=Path(dataset.path), out=Path(teacher.path),
                    checkpoints=rt.checkpoints(workspace, task),
                    tracking=rt.tracking(mlflow_tracking_uri, experiment),
                    init=Path(init.path) if init else None)
    rt.report_training(result, metrics, teacher, run_params.model.teacher)
