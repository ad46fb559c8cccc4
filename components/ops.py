"""All dbdgan components in one place, optionally re-targeted at another image."""

from __future__ import annotations

from types import SimpleNamespace

from components.distill_student import distill_student
from components.evaluate import evaluate_models, metric_value
from components.factory import with_image
from components.prepare import prepare_data
from components.publish import publish_reports
from components.register import register_models
from components.train_teacher import train_teacher
from components.validate import validate_data

COMPONENTS = {
    "prepare_data": prepare_data,
    "validate_data": validate_data,
    "train_teacher": train_teacher,
    "distill_student": distill_student,
    "evaluate_models": evaluate_models,
    "metric_value": metric_value,
    "register_models": register_models,
    "publish_reports": publish_reports,
}


def ops(base_image: str | None = None) -> SimpleNamespace:
    """The components as attributes (ops().train_teacher ...), on `base_image` when given."""
    if base_image is None:
        return SimpleNamespace(**COMPONENTS)
    return SimpleNamespace(**{name: with_image(comp, base_image) for name, comp in COMPONENTS.items()})
