"""Component: distil the student from the frozen teacher -> student Model."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.factory import component


@component
def distill_student(params_yaml: str, overrides: list, mlflow_tracking_uri: str, experiment: str,
                    dataset: Input[Dataset], teacher: Input[Model], student: Output[Model],
                    metrics: Output[Metrics], init: Input[Model] | None = None) -> None:
    """Distil the student (dbdgan.steps.distill_student); logs to MLflow when a URI is set.

    init: a student to start from (synthetic pre-training), else distill_student.init_from or scratch.
    """
    from components import _runtime as rt
    from dbdgan import steps

    rt.use_tracking(mlflow_tracking_uri)
    settings = {"register.experiment": experiment, **({"distill_student.init_from": init.path} if init else {})}
    params = rt.load_params(params_yaml, overrides, settings)
    result = steps.distill_student(params, teacher_path=teacher.path, data_dir=dataset.path,
                                   out_path=student.path, checkpoint_dir=rt.scratch("student-checkpoints"))
    values = rt.scalars({k: v for k, v in result.items() if k != "history"})
    for key, value in values.items():
        metrics.log_metric(key, value)
    student.metadata.update({"arch": params.model.student, "framework": "pytorch",
                             "mlflow_run_id": result.get("mlflow_run_id") or "", **values})
