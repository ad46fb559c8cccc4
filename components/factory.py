"""How every dbdgan component is declared: a lightweight Python component on the project image.

Lightweight (not "containerized") components, because `kfp.local.SubprocessRunner` runs only those and the
same pipeline must run on a laptop and on a cluster. `install_kfp_package=False`: the image already holds
kfp and dbdgan (pinned by constraints.txt), so no pod ever pip-installs at start-up.

The image is named when a pipeline is built (`ops(image)`), not when this module is imported: `--image`, else
$DBDGAN_IMAGE (set inside the image to its own name), else the tag `make image` gives the checkout it builds.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from kfp import dsl
from kfp.dsl.python_component import PythonComponent

IMAGE_ENV = "DBDGAN_IMAGE"
REPO_ENV = "DBDGAN_IMAGE_REPO"
DEFAULT_REPO = "localhost/dbdgan"
# The placeholder components carry until ops() puts them on a real image; it never reaches a compiled file.
UNSET_IMAGE = "dbdgan-image-unset"
CHECKOUT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def build_tag(repo: str | None = None) -> str:
    """`<repo>:<version>-g<commit>[-dirty]` of this checkout: what `make image` tags, never `latest`.

    `-dirty` marks uncommitted changes to tracked files, so an image built from them is never mistaken for
    the commit's own. repo: default $DBDGAN_IMAGE_REPO, else localhost/dbdgan.
    """
    repo = repo or os.environ.get(REPO_ENV, "").strip() or DEFAULT_REPO
    try:
        commit = _git("rev-parse", "--short=10", "HEAD")
        dirty = "-dirty" if _git("status", "--porcelain", "--untracked-files=no") else ""
    except (OSError, subprocess.CalledProcessError):
        raise RuntimeError(f"cannot name the image: {CHECKOUT} is not a git checkout; pass --image or set "
                           f"${IMAGE_ENV}") from None
    return f"{repo}:{version('dbdgan')}-g{commit}{dirty}"


def image() -> str:
    """The image components run in: $DBDGAN_IMAGE, else build_tag()."""
    return os.environ.get(IMAGE_ENV, "").strip() or build_tag()


def component(func: Callable[..., Any]) -> PythonComponent:
    """Decorator: `func` becomes a component (on the placeholder image until `with_image`)."""
    return dsl.component(func, base_image=UNSET_IMAGE, install_kfp_package=False)


def with_image(comp: PythonComponent, base_image: str) -> PythonComponent:
    """The same component on `base_image`."""
    return dsl.component(comp.python_func, base_image=base_image, install_kfp_package=False)
