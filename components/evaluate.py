"""Component: score teacher and student (and the baselines) on the evaluation split."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from dbdgan_kfp.components.factory import component


@component
def evaluate(params: str, mlflow_tracking_uri: str, experiment: str,
             dataset: Input[Dataset], teacher: Input[Model], student: Input[Model], scores: Output[Artifact],
             metrics: Output[Metrics], report: Output[HTML]) -> None:
    """Accuracy + efficiency of both models and the baselines (dbdgan.steps.evaluate).

    `scores` holds <model>.json, curves and the qualitative grid; `metrics` shows every scalar as
    `<model>.<metric>`; with evaluate.log_to_mlflow they are also attached to each model's training run.
    """
    from pathlib import Path

    from dbdgan import steps
    from dbdgan_kfp.components import _runtime as rt

    run_params = rt.load_params(params)
    results = steps.evaluate(run_params, dataset=Path(dataset.path), out=Path(scores.path), teacher=teacher.path,
                             student=student.path, tracking=rt.tracking(mlflow_tracking_uri, experiment))
    tables = {name: rt.scalars(values) for name, values in results.items()}
    for name, table in tables.items():
        for key, value in table.items():
            metrics.log_metric(f"{name}.{key}", value)
    plots = Path(scores.path) / "plots"
    rt.write_text(report.path, rt.html_page(f"Evaluation on the {run_params.evaluate.split} split", tables,
                                            [plots / "curves.png", plots / "grid.png"]))
