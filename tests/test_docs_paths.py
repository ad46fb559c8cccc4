"""The README names the files the pipeline really writes (issue 26: it said metrics/curves.png)."""

from __future__ import annotations

import re
from pathlib import Path

from dbdgan import graph

REPO = Path(__file__).resolve().parents[1]


def test_the_plots_the_readme_names_are_the_ones_dvc_draws():
    text = (REPO / "README.md").read_text()
    named = set(re.findall(r"(?<![\w/])(metrics/[\w/{},<>*.-]+\.png)", text))
    drawn = {entry for entry in graph.DVC_PLOTS if isinstance(entry, str)}
    assert named, "the README names no plot"
    assert named <= drawn, f"not written by the evaluate step: {sorted(named - drawn)}"
    assert drawn <= named  # and it names both


def test_the_metrics_folders_the_readme_names_are_outputs_or_the_efficiency_files():
    from dbdgan.evaluation.scores import DETAILS, EFFICIENCY

    text = (REPO / "README.md").read_text()
    folders = set(re.findall(r"`metrics/(\w+)/`", text))
    assert folders <= {DETAILS, EFFICIENCY, "plots"}, folders
