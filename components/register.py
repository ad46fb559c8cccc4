"""Component: register teacher and student in the MLflow model registry (runs only past the gate)."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.factory import component


@component
def register_models(params_yaml: str, overrides: list, mlflow_tracking_uri: str, experiment: str,
                    teacher_name: str, student_name: str, run_id: str, reports_uri: str,
                    dataset: Input[Dataset], teacher: Input[Model], student: Input[Model],
                    scores: Input[Artifact], registered: Output[Artifact], summary: Output[Markdown]) -> int:
    """Register both models with their metrics, alias `challenger` (dbdgan.steps.register).

    Returns the student's new registry version.
    """
    import json

    from components import _runtime as rt
    from dbdgan import steps

    rt.use_tracking(mlflow_tracking_uri)
    params = rt.load_params(params_yaml, overrides, {
        "train_teacher.out": teacher.path, "distill_student.out": student.path,
        "register.experiment": experiment, "register.teacher_name": teacher_name,
        "register.student_name": student_name, "register.out": registered.path,
    })
    result = steps.register(params, metrics_dir=scores.path, out_path=registered.path, data_dir=dataset.path)
    rows = {f"{role} {entry['name']}": f"version {entry['version']} ({entry['model_uri']})"
            for role, entry in result.items()}
    registered.metadata.update({role: entry["model_uri"] for role, entry in result.items()})
    registered.metadata["published_to"] = rt.publish(registered.path, reports_uri, run_id, "registered.json")
    details = "```json\n" + json.dumps(result, indent=2, default=str) + "\n```"
    rt.write_text(summary.path, rt.markdown("Registered models (alias challenger)", rows, details))
    return int(result["student"]["version"])
