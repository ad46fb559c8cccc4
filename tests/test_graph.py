"""The step table is the one declaration: dvc.yaml, the KFP components and pipeline, and the library follow it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import yaml

from dbdgan import dvc_pipeline, graph, steps

REPO = Path(__file__).resolve().parents[1]


def test_dvc_stages_are_the_ones_the_step_table_implies():
    d = dvc_pipeline
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert declared["stages"] == d.dvc_stages(), "dvc.yaml is stale: run `dbdgan steps --dvc > dvc.yaml`"
    assert list(declared["stages"]) == [one.name for one in graph.STEPS]
    assert (REPO / d.DVC_INPUTS_FILE).is_file() and d.DVC_INPUTS_FILE in declared["vars"]
    assert declared == d.dvc_file(), "dvc.yaml is stale: run `dbdgan steps --dvc > dvc.yaml`"
    assert (REPO / "dvc.yaml").read_text() == d.dvc_yaml_text(d.dvc_file()), "regenerate dvc.yaml"
    assert yaml.safe_load((REPO / d.DVC_INPUTS_FILE).read_text()) == d.DVC_VARS
    # every variable a stage reads is one of inputs.yaml's
    assert {o.dvc_var for one in graph.STEPS for o in one.options if o.dvc_var} <= set(d.DVC_VARS)


def test_each_step_function_takes_what_its_row_declares():
    """The row is the declaration; the function must take every argument it lists (it may take more, for
    callers that are no runner: register's teacher_source, given by its KFP component)."""
    for one in graph.STEPS:
        parameters = inspect.signature(getattr(steps, one.name)).parameters
        assert list(parameters)[0] == "params"
        assert {*one.inputs, "out", *(arg for arg, _ in one.scratch)} <= set(one.arguments)
        missing = set(one.arguments) - set(parameters)
        assert not missing, f"steps.{one.name} lacks {missing}, which graph.STEPS declares"
        assert one.takes("tracking") == one.tracked and one.takes("names") == one.registers


def test_call_passes_exactly_what_the_step_declares(monkeypatch):
    seen: dict = {}

    def validate(params, **given):
        seen.update(given)
        return "done"

    monkeypatch.setattr(steps, "validate", validate)
    one = graph.step("validate")
    with pytest.raises(TypeError, match="step validate takes no argument 'tracking'"):
        steps.call(one, None, dataset="d", out="o", tracking="t")  # a foreign argument is never dropped
    with pytest.raises(TypeError, match="step validate takes no argument 'datset'; it takes dataset, out"):
        steps.call(one, None, datset="d", out="o")  # nor a misspelt one
    assert seen == {}  # refused before the step ran
    assert steps.call(one, None, dataset="d", out="o") == "done"
    assert seen == {"dataset": "d", "out": "o"}
    seen.clear()
    steps.call(one, None, dataset="d", out=None)  # None: the function's own default
    assert seen == {"dataset": "d"}


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
    """A new step appears in the CLI (its options too) and dvc.yaml's stages from the table alone."""
    from dbdgan.cli import _overrides, build_parser, step_arguments

    extra = graph.Step("summarise", ("scores",), "registered", ("evaluate",), tracked=True,
                       options=(graph.Option("--top", "how many", argument="top"),
                                graph.Option("--beta", "evaluate.beta2", param="evaluate.beta2")))
    monkeypatch.setattr(graph, "STEPS", (*graph.STEPS, extra))
    monkeypatch.setattr(steps, "summarise", lambda params, scores, out, tracking, top=3: None, raising=False)
    args = build_parser().parse_args(["summarise", "--scores", "m", "--out", "s.json", "--top", "5",
                                      "--experiment", "e"])
    assert (args.scores, args.out) == ("m", "s.json")
    given = step_arguments(extra, args)
    assert given["top"] == "5" and given["tracking"].experiment == "e" and set(given) == set(extra.arguments)
    # an option that sets a param is an override after --set's, never an argument
    args = build_parser().parse_args(["summarise", "--set", "seed=1", "--beta", "0.5"])
    assert _overrides(args) == ["seed=1", "evaluate.beta2=0.5"] and "beta" not in step_arguments(extra, args)
    assert dvc_pipeline.dvc_stages()["summarise"]["cmd"] == (
        '${cli} summarise --scores metrics --tracking-uri "${tracking_uri}" --experiment "${experiment}" '
        "--out reports/registered.json")


def test_an_option_is_either_an_argument_or_a_param():
    with pytest.raises(ValueError, match="exactly one of"):
        graph.Option("--x", "both", argument="x", param="a.x")
    with pytest.raises(ValueError, match="exactly one of"):
        graph.Option("--x", "neither")


def test_init_steps_are_the_rows_that_take_init():
    assert graph.INIT_STEPS == ("train_teacher", "distill_student")
    assert all(graph.step(name).pod.gpu for name in graph.INIT_STEPS)
