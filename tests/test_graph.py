"""The step table is the one declaration: dvc.yaml, the KFP components and pipeline, and the library follow it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import yaml

from dbdgan import graph, steps

REPO = Path(__file__).resolve().parents[1]


def test_dvc_stages_are_the_ones_the_step_table_implies():
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert declared["stages"] == graph.dvc_stages(), "dvc.yaml is stale: run `dbdgan steps --dvc > dvc.yaml`"
    assert list(declared["stages"]) == [one.name for one in graph.STEPS]
    assert (REPO / graph.DVC_INPUTS_FILE).is_file() and graph.DVC_INPUTS_FILE in declared["vars"]
    assert declared == graph.dvc_file(), "dvc.yaml is stale: run `dbdgan steps --dvc > dvc.yaml`"
    assert (REPO / "dvc.yaml").read_text() == graph.dvc_yaml_text(graph.dvc_file()), "regenerate dvc.yaml"
    assert yaml.safe_load((REPO / graph.DVC_INPUTS_FILE).read_text()) == graph.DVC_VARS


def test_each_step_function_takes_its_artifacts_by_name():
    for one in graph.STEPS:
        parameters = inspect.signature(getattr(steps, one.name)).parameters
        assert list(parameters)[0] == "params"
        missing = {*one.inputs, "out", *(arg for arg, _ in one.scratch)} - set(parameters)
        assert not missing, f"steps.{one.name} lacks {missing}"


def test_each_step_has_a_component_with_the_same_inputs_and_outputs():
    from dbdgan_kfp.components.ops import STEP_COMPONENTS

    assert list(STEP_COMPONENTS) == [one.name for one in graph.STEPS]
    for one in graph.STEPS:
        spec = STEP_COMPONENTS[one.name].component_spec
        artifact_inputs = {name for name, value in (spec.inputs or {}).items() if value.type not in
                           ("String", "Integer", "Float", "Boolean", "List", "Dict")}
        assert artifact_inputs - {"init"} == set(one.inputs), one.name
        assert one.output in (spec.outputs or {}), one.name


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_the_library_never_imports_kfp_dvc_or_its_adapters():
    forbidden = ("kfp", "dvc", "dbdgan_kfp", "components", "pipelines")
    for path in (REPO / "src" / "dbdgan").rglob("*.py"):
        bad = {name for name in _imports(path) if name.split(".")[0] in forbidden}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_adding_a_step_needs_only_the_table_function_and_component(monkeypatch):
    """A new step appears in the CLI and dvc.yaml's stages from the table alone."""
    from dbdgan.cli import build_parser

    extra = graph.Step("summarise", ("scores",), "registered", ("evaluate",))
    monkeypatch.setattr(graph, "STEPS", (*graph.STEPS, extra))
    monkeypatch.setattr(steps, "summarise", lambda params, scores, out: None, raising=False)
    args = build_parser().parse_args(["summarise", "--scores", "m", "--out", "s.json"])
    assert (args.scores, args.out) == ("m", "s.json")
    assert graph.dvc_stages()["summarise"]["cmd"] == "${cli} summarise --scores metrics --out reports/registered.json"
