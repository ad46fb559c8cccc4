"""Component: adversarial teacher training on the prepared Dataset -> teacher Model."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.factory import component


@component
def train_teacher(params_yaml: str, overrides: list, mlflow_tracking_uri: str, experiment: str,
                  dataset: Input[Dataset], teacher: Output[Model], metrics: Output[Metrics],
                  init: Input[Model] | None = None) -> None:
    """Train the teacher against D1 (dbdgan.steps.train_teacher); logs to MLflow when a URI is set.

    init: a teacher to start from (synthetic pre-training), else train_teacher.init_from or scratch.
    """
    from components import _runtime as rt
    from dbdgan import steps

    rt.use_tracking(mlflow_tracking_uri)
    settings = {"register.experiment": experiment, **({"train_teacher.init_from": init.path} if init else {})}
    params = rt.load_params(params_yaml, overrides, settings)
    result = steps.train_teacher(params, data_dir=dataset.path, out_path=teacher.path,
                                 checkpoint_dir=rt.scratch("teacher-checkpoints"))
    values = rt.scalars({k: v for k, v in result.items() if k != "history"})
    for key, value in values.items():
        metrics.log_metric(key, value)
    teacher.metadata.update({"arch": params.model.teacher, "framework": "pytorch",
                             "mlflow_run_id": result.get("mlflow_run_id") or "", **values})
