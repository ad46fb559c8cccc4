"""Component: copy a run's reports to S3 (validation, evaluation), under the run's id."""

from kfp.dsl import Artifact, Input

from dbdgan_kfp.components.factory import component


@component
def publish_reports(reports_uri: str, run_id: str, validation: Input[Artifact],
                    scores: Input[Artifact]) -> str:
    """Upload the validation report and the evaluation folder to <reports_uri>/<run_id>/; return that.

    A separate step so that validate and evaluate stay cacheable (a run id among their inputs would make
    every run a cache miss).
    """
    from dbdgan_kfp.components import _runtime as rt

    rt.publish(validation.path, reports_uri, run_id, "validation")
    rt.publish(scores.path, reports_uri, run_id, "evaluation")
    return f"{reports_uri.rstrip('/')}/{run_id}"
