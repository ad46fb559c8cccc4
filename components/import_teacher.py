"""Component: a teacher trained by an earlier run (MLflow registry URI, s3:// or a file) -> teacher Model."""

from kfp.dsl import Model, Output

from dbdgan_kfp.components.factory import component


@component
def import_teacher(source: str, mlflow_tracking_uri: str, teacher: Output[Model]) -> None:
    """Fetch the teacher (dbdgan.model_source.fetch_model) in place of training one.

    Its provenance (the exact registry version or URI, sha256, the run that trained it) becomes the Model's
    metadata, which the student's registration records as its teacher.
    """
    from dbdgan.model_source import fetch_model
    from dbdgan_kfp.components import _runtime as rt

    # a registry URI needs the tracking server (never a pod-local store); a file or s3:// URI does not
    uri = rt.tracking(mlflow_tracking_uri, "").uri if source.startswith("models:/") else None
    facts = fetch_model(source, teacher.path, role="teacher", tracking_uri=uri)
    teacher.metadata.update({key: value for key, value in facts.items() if value not in ("", None)})
