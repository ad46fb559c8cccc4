"""Component: Great Expectations checks on the prepared Dataset; a failure stops the pipeline."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.factory import component


@component
def validate_data(params_yaml: str, overrides: list, run_id: str, reports_uri: str, dataset: Input[Dataset],
                  report: Output[Artifact], summary: Output[Markdown]) -> None:
    """Validate the prepared dataset (dbdgan.steps.validate): Data Docs + validation.json in `report`.

    On failure the error lists every failing file and expectation; the report is still copied to
    reports_uri (when set) so that it can be read although KFP keeps no outputs of a failed task.
    """
    from components import _runtime as rt
    from dbdgan import steps
    from dbdgan.data.validation import DataValidationError

    params = rt.load_params(params_yaml, overrides)
    try:
        result = steps.validate(params, data_dir=dataset.path, report_dir=report.path)
    except DataValidationError:
        rt.publish(report.path, reports_uri, run_id, "validation")
        raise
    facts = {"success": result.success, "rows": result.n_rows, "expectations": result.evaluated_expectations,
             "warnings": len(result.warnings), **result.split_counts}
    report.metadata.update({key: value for key, value in facts.items() if not isinstance(value, bool)})
    report.metadata["published_to"] = rt.publish(report.path, reports_uri, run_id, "validation")
    rt.write_text(summary.path, rt.markdown("Data validation", facts, result.message()))
