"""Component: register teacher and student in the MLflow registry; the student meets the promotion gate."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from dbdgan_kfp.components.factory import component


@component
def register(params: str, mlflow_tracking_uri: str, experiment: str, teacher_name: str,
             student_name: str, run_id: str, reports_uri: str, dataset: Input[Dataset], teacher: Input[Model],
             student: Input[Model], scores: Input[Artifact], registered: Output[Artifact],
             summary: Output[Markdown]) -> str:
    """Register both models with their metrics, alias `challenger` (dbdgan.steps.register).

    Returns the gate's decision on the student (promoted, passed, rejected or unchanged: what
    aliases.run_gate decided from params `register.gate`), which the pipeline's condition reads; kfp.local
    resolves a task's single return value in a dsl.If, but not named outputs.
    """
    import json
    from pathlib import Path

    from dbdgan import steps
    from dbdgan.storage import check_reachable
    from dbdgan.tracking import ModelNames
    from dbdgan_kfp.components import _runtime as rt

    run_params = rt.load_params(params)
    rt.set_pipeline_run(run_id)
    check_reachable(reports_uri)  # S3 down is found before anything is registered, not after
    result = steps.register(run_params, dataset=Path(dataset.path), teacher=Path(teacher.path),
                            student=Path(student.path), scores=Path(scores.path), out=Path(registered.path),
                            tracking=rt.tracking(mlflow_tracking_uri, experiment),
                            names=ModelNames(teacher=teacher_name, student=student_name),
                            teacher_source=str(teacher.metadata.get("source", "")))
    decision = steps.gate_decision(result)
    rows = {f"{role} {entry['name']}": f"version {entry['version']} ({entry['model_uri']})"
            for role, entry in result.items()}
    registered.metadata.update({role: entry["model_uri"] for role, entry in result.items()})
    registered.metadata["gate"] = decision
    registered.metadata["published_to"] = rt.publish(registered.path, reports_uri, run_id, "registered.json")
    details = "```json\n" + json.dumps(result, indent=2, default=str) + "\n```"
    rt.write_text(summary.path, rt.markdown(f"Registered models (alias challenger); gate: {decision}", rows,
                                            details))
    return decision


@component
def announce_champion(registered: Input[Artifact], champion: Output[Markdown]) -> str:
    """Runs only when the gate promoted the student: names the new champion (the hook for a deployment)."""
    import json
    from pathlib import Path

    from dbdgan_kfp.components import _runtime as rt

    entry = json.loads(Path(registered.path).read_text())["student"]
    uri = f"models:/{entry['name']}@champion"
    rt.write_text(champion.path, rt.markdown("New champion", {"model": uri, "version": entry["version"]}))
    return uri
