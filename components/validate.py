"""Component: Great Expectations checks on the prepared Dataset; a failure stops the pipeline."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from dbdgan_kfp.components.factory import component


@component
def validate(params: str, reports_uri: str, dataset: Input[Dataset],
             validation: Output[Artifact], summary: Output[Markdown]) -> None:
    """Validate the prepared dataset (dbdgan.steps.validate): Data Docs + validation.json in `validation`.

    On failure the error lists every failing file and expectation, and (when reports_uri is set) the report
    is copied to <reports_uri>/failed-validation/<manifest sha256> so that it can be read: KFP keeps no
    outputs of a failed task. No run id here, so that the step stays cacheable.
    """
    import hashlib
    from pathlib import Path

    from dbdgan import steps
    from dbdgan.data.checks import DataCheckError
    from dbdgan_kfp.components import _runtime as rt

    run_params = rt.load_params(params)
    try:
        result = steps.validate(run_params, dataset=Path(dataset.path), out=Path(validation.path))
    except DataCheckError:
        manifest = Path(dataset.path) / "manifest.csv"
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else "unknown"
        rt.publish(validation.path, reports_uri, "failed-validation", digest)
        raise
    facts = {"success": result.success, "rows": result.n_rows, "expectations": result.evaluated_expectations,
             "warnings": len(result.warnings), **result.split_counts}
    validation.metadata.update({key: value for key, value in facts.items() if not isinstance(value, bool)})
    rt.write_text(summary.path, rt.markdown("Data validation", facts, result.message()))
