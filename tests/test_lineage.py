"""Where the running code came from: the image's baked-in commit first, else git in the package's own checkout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pipeline_fixtures import REPO

from dbdgan import lineage
from dbdgan.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"
IMAGE = "registry.example.com/ml/dbdgan:0.1.0-g0123456789"


@pytest.fixture(autouse=True)
def _no_image_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (lineage.COMMIT_ENV, lineage.DIRTY_ENV, lineage.IMAGE_ENV, lineage.PIPELINE_RUN_ENV):
        monkeypatch.delenv(name, raising=False)


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True,
                          env={"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(folder), "PATH": "/usr/bin:/bin"}).stdout


def _other_repository(folder: Path) -> Path:
    """A git repository with a commit of its own (a user's project, say) to stand in as the working folder."""
    folder.mkdir()
    _git(folder, "init", "-q")
    (folder / "x").write_text("x")
    _git(folder, "add", "x")
    _git(folder, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "other")
    return folder


def test_the_images_baked_in_commit_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lineage.COMMIT_ENV, COMMIT)
    monkeypatch.setenv(lineage.DIRTY_ENV, "0")
    monkeypatch.setenv(lineage.IMAGE_ENV, IMAGE)
    monkeypatch.setenv(lineage.PIPELINE_RUN_ENV, "run-42")
    found = lineage.current()
    assert found == lineage.Lineage(commit=COMMIT, dirty=False, image=IMAGE, pipeline_run_id="run-42")
    assert found.tags() == {"git_commit": COMMIT, "git_dirty": "false", "image": IMAGE, "pipeline_run_id": "run-42"}
    assert found.tags(prefix="dbdgan.")["dbdgan.image"] == IMAGE


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs this git checkout")
def test_outside_an_image_git_is_asked_in_the_packages_checkout_not_the_working_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = _other_repository(tmp_path / "project")
    monkeypatch.chdir(other)
    found = lineage.current()
    assert found.commit == _git(REPO, "rev-parse", "HEAD").strip() != _git(other, "rev-parse", "HEAD").strip()
    assert isinstance(found.dirty, bool)
    assert (found.image, found.pipeline_run_id) == ("", "")
    assert "image" not in found.tags() and found.tags()["git_commit"] == found.commit


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_copy_in_an_ignored_folder_of_some_repository_is_unknown(tmp_path: Path) -> None:
    """An installed package inside a checkout's venv says nothing about that checkout's HEAD."""
    other = _other_repository(tmp_path / "project")
    (other / ".gitignore").write_text(".venv\n")
    package = other / ".venv" / "site-packages" / "dbdgan"
    package.mkdir(parents=True)
    shutil.copy(lineage.PACKAGE_DIR / "__init__.py", package / "__init__.py")
    assert lineage.current(package) == lineage.Lineage()
    assert lineage.Lineage().tags() == {"git_commit": "unknown", "git_dirty": "unknown"}


def test_without_git_or_a_checkout_the_commit_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "dbdgan"
    package.mkdir()
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to run, as in the image
    assert lineage.current(package).commit == lineage.UNKNOWN
    monkeypatch.setenv(lineage.IMAGE_ENV, IMAGE)
    assert lineage.current(package).describe() == f"commit unknown, image {IMAGE}"


def test_version_prints_the_commit_and_the_image(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from dbdgan import __version__

    monkeypatch.setenv(lineage.COMMIT_ENV, COMMIT)
    monkeypatch.setenv(lineage.DIRTY_ENV, "1")
    monkeypatch.setenv(lineage.IMAGE_ENV, IMAGE)
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"dbdgan {__version__}, commit {COMMIT} (dirty), image {IMAGE}"
