"""Where the running code came from: its commit, whether it had uncommitted changes, the image, the pipeline run.

A pod has no `.git` (and no git), so `make image` bakes the commit and the dirty flag into the image as
environment variables beside the image's own name; outside an image the commit is asked of git in the
package's own checkout, never in the working folder (which may be any folder, or another repository).
Registered versions, their MLflow runs and model cards record what this module finds.
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

COMMIT_ENV = "DBDGAN_GIT_COMMIT"  # baked in by `make image` (scripts/build-image.sh)
DIRTY_ENV = "DBDGAN_GIT_DIRTY"  # "1": built from a checkout with uncommitted changes to tracked files
IMAGE_ENV = "DBDGAN_IMAGE"  # the image's own reference, set inside it
PIPELINE_RUN_ENV = "DBDGAN_PIPELINE_RUN_ID"  # the Kubeflow pipeline run, set by the components
UNKNOWN = "unknown"
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Lineage:
    """The code's provenance; `dirty` None, `image` and `pipeline_run_id` "" when not known."""

    commit: str = UNKNOWN
    dirty: bool | None = None
    image: str = ""
    pipeline_run_id: str = ""

    def tags(self, prefix: str = "") -> dict[str, str]:
        """As MLflow tags: commit and dirty always (unknown when unknown), image and run id when known."""
        tags = {"git_commit": self.commit, "git_dirty": UNKNOWN if self.dirty is None else str(self.dirty).lower()}
        if self.image:
            tags["image"] = self.image
        if self.pipeline_run_id:
            tags["pipeline_run_id"] = self.pipeline_run_id
        return {f"{prefix}{key}": value for key, value in tags.items()}

    def describe(self) -> str:
        """One line for `dbdgan --version`: commit (marked dirty), then the image when there is one."""
        text = f"commit {self.commit}{' (dirty)' if self.dirty else ''}"
        return f"{text}, image {self.image}" if self.image else text


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()


@functools.cache
def from_git(package_dir: Path) -> tuple[str, bool | None]:
    """(HEAD, dirty) of the checkout that holds `package_dir`, or (unknown, None) when it is in none.

    The package must be tracked there: an installed copy inside some repository's ignored folder (a venv in a
    checkout) says nothing about that repository's HEAD.
    """
    try:
        _git(package_dir, "ls-files", "--error-unmatch", "__init__.py")
        commit = _git(package_dir, "rev-parse", "HEAD")
        dirty = bool(_git(package_dir, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN, None
    return commit, dirty


def _flag(text: str) -> bool | None:
    value = text.strip().lower()
    return True if value in ("1", "true", "yes") else False if value in ("0", "false", "no") else None


def current(package_dir: Path = PACKAGE_DIR) -> Lineage:
    """The running code's lineage: the image's baked-in commit when set, else git in the package's checkout."""
    commit = os.environ.get(COMMIT_ENV, "").strip()
    if commit:
        dirty = _flag(os.environ.get(DIRTY_ENV, ""))
    else:
        commit, dirty = from_git(package_dir)
    return Lineage(commit=commit, dirty=dirty, image=os.environ.get(IMAGE_ENV, "").strip(),
                   pipeline_run_id=os.environ.get(PIPELINE_RUN_ENV, "").strip())
