"""How every dbdgan component is declared: a lightweight Python component on the project image.

Lightweight (not "containerized") components, because `kfp.local.SubprocessRunner` runs only those and the
same pipeline must run on a laptop and on a cluster. `install_kfp_package=False`: the image already holds
kfp and dbdgan (pinned by constraints.txt), so no pod ever pip-installs at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from kfp import dsl
from kfp.dsl.python_component import PythonComponent

IMAGE_ENV = "DBDGAN_IMAGE"
DEFAULT_IMAGE = "ghcr.io/dbdgan/dbdgan:latest"


def image() -> str:
    """The image components run in: $DBDGAN_IMAGE, else the default tag."""
    return os.environ.get(IMAGE_ENV, "").strip() or DEFAULT_IMAGE


def component(func: Callable[..., Any]) -> PythonComponent:
    """Decorator: `func` becomes a component on `image()` (read when the module is imported)."""
    return dsl.component(func, base_image=image(), install_kfp_package=False)


def with_image(comp: PythonComponent, base_image: str) -> PythonComponent:
    """The same component on another image (`dbdgan pipeline compile --image ...`)."""
    return dsl.component(comp.python_func, base_image=base_image, install_kfp_package=False)
