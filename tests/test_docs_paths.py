"""The README names the files the pipeline really writes (issue 26: it said metrics/curves.png)."""

from __future__ import annotations

import re
from pathlib import Path

from dbdgan import dvc_pipeline

REPO = Path(__file__).resolve().parents[1]


def test_the_plots_the_readme_names_are_the_ones_dvc_draws():
    text = (REPO / "README.md").read_text()
    named = set(re.findall(r"(?<![\w/])(metrics/[\w/{},<>*.-]+\.png)", text))
    drawn = {entry for entry in dvc_pipeline.DVC_PLOTS if isinstance(entry, str)}
    assert named, "the README names no plot"
    assert named <= drawn, f"not written by the evaluate step: {sorted(named - drawn)}"
    assert drawn <= named  # and it names both


def test_the_metrics_folders_the_readme_names_are_outputs_or_the_efficiency_files():
    from dbdgan.evaluation.scores import DETAILS, EFFICIENCY

    text = (REPO / "README.md").read_text()
    folders = set(re.findall(r"`metrics/(\w+)/`", text))
    assert folders <= {DETAILS, EFFICIENCY, "plots"}, folders


# Issue 24: the README is a model README (at most about 12 KB), and no doc points outside the repository.
DOCS = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TRACKED_DIRS = ("src", "components", "pipelines", "profiles", "benchmarks", "docs", "tests", "scripts", "deploy")
TOP_FILES = (
    "params.yaml",
    "dvc.yaml",
    "dvc.lock",
    "inputs.yaml",
    "constraints.txt",
    "pyproject.toml",
    "Makefile",
    "LICENSE",
    "CITATION.cff",
    "Dockerfile",
)
REPO_PATH = re.compile(rf"^(?:(?:{'|'.join(TRACKED_DIRS)})/[\w./-]*|{'|'.join(map(re.escape, TOP_FILES))})$")


def _linked(text: str) -> set[str]:
    """Targets of Markdown links and images and of HTML src/href attributes, without anchors."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"(?:src|href)=\"([^\"]+)\"", text)
    return {t.split("#")[0] for t in targets if t.split("#")[0] and not re.match(r"^[a-z]+:", t)}


def test_the_readme_is_a_model_readme_of_at_most_about_12_kb():
    text = (REPO / "README.md").read_text()
    assert len(text.encode()) <= 12.5 * 1024, f"README.md is {len(text.encode())} bytes"
    assert "metrics/plots/grid.png" in text  # what the model does, as a picture
    assert "make test`" in text or "make test " in text  # CI's command
    assert "make test-fast" in text
    assert "10.1145/3557897" in text  # the paper's citation
    assert (REPO / "LICENSE").is_file()


def test_docs_name_no_file_outside_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        assert "DESIGN.md" not in text, f"{doc.relative_to(REPO)} cites DESIGN.md, which is not in the repository"
        assert not re.search(r"(?<![\w.])/work/", text), f"{doc.relative_to(REPO)} names a path of this machine"
        for target in _linked(text):
            resolved = (doc.parent / target).resolve()
            assert resolved.is_relative_to(REPO), f"{doc.relative_to(REPO)} links outside the repository: {target}"


def test_the_files_docs_link_to_and_name_exist():
    for doc in DOCS:
        text = doc.read_text()
        for target in _linked(text):
            assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)} links to a missing {target}"
        for name in re.findall(r"`([^`\s]+)`", text):
            if not REPO_PATH.match(name) or re.search(r"[*{}<>]", name):
                continue
            assert (REPO / name).exists() or (doc.parent / name).exists(), (
                f"{doc.relative_to(REPO)} names a missing {name}"
            )
