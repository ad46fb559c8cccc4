"""Components: score teacher and student on the test split; read one metric back for the promotion gate."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.factory import component


@component
def evaluate_models(params_yaml: str, overrides: list, mlflow_tracking_uri: str, dataset: Input[Dataset],
                    teacher: Input[Model], student: Input[Model], metrics: Output[Metrics],
                    scores: Output[Artifact], report: Output[HTML]) -> float:
    """Accuracy + efficiency of both models and the baselines (dbdgan.steps.evaluate).

    `scores` holds <model>.json, curves and the qualitative grid; `metrics` shows every scalar as
    `<model>.<metric>`; with evaluate.log_to_mlflow they are also attached to each model's training run.
    Returns the student's max-F (the first promotion gate): kfp.local resolves a task's single return value
    in a dsl.If, but not named outputs.
    """
    from pathlib import Path

    from components import _runtime as rt
    from dbdgan import steps

    rt.use_tracking(mlflow_tracking_uri)
    params = rt.load_params(params_yaml, overrides)
    results = steps.evaluate(params, models={"teacher": teacher.path, "student": student.path},
                             data_dir=dataset.path, out_dir=scores.path)
    tables = {name: rt.scalars(values) for name, values in results.items()}
    for name, table in tables.items():
        for key, value in table.items():
            metrics.log_metric(f"{name}.{key}", value)
    plots = Path(scores.path) / "plots"
    rt.write_text(report.path, rt.html_page(f"Evaluation on the {params.evaluate.split} split", tables,
                                            [plots / "curves.png", plots / "grid.png"]))
    return rt.pick(tables["student"], "max_f")


@component
def metric_value(metrics: Input[Metrics], name: str) -> float:
    """One logged metric (e.g. `student.mae`) as a pipeline value, for a dsl.If gate."""
    from components import _runtime as rt

    return rt.pick({key: float(value) for key, value in metrics.metadata.items()}, name)
