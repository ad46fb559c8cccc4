"""All dbdgan components in one place, on the image a pipeline is built for.

`STEP_COMPONENTS` holds one component per step of dbdgan.graph.STEPS, under the step's name (a test checks
that they match); the others are pipeline plumbing.
"""

from __future__ import annotations

from types import SimpleNamespace

from dbdgan_kfp.components.distill_student import distill_student
from dbdgan_kfp.components.evaluate import evaluate
from dbdgan_kfp.components.factory import image, with_image
from dbdgan_kfp.components.import_teacher import import_teacher
from dbdgan_kfp.components.prepare import prepare
from dbdgan_kfp.components.publish import publish_reports
from dbdgan_kfp.components.register import announce_champion, register
from dbdgan_kfp.components.train_teacher import train_teacher
from dbdgan_kfp.components.validate import validate

STEP_COMPONENTS = {comp.name.replace("-", "_"): comp for comp in
                   (prepare, validate, train_teacher, distill_student, evaluate, register)}
COMPONENTS = {**STEP_COMPONENTS, "import_teacher": import_teacher, "publish_reports": publish_reports,
              "announce_champion": announce_champion}


def ops(base_image: str | None = None) -> SimpleNamespace:
    """The components as attributes (ops().train_teacher ...), on `base_image` (default: factory.image())."""
    base_image = base_image or image()
    return SimpleNamespace(**{name: with_image(comp, base_image) for name, comp in COMPONENTS.items()})
