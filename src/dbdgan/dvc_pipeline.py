"""The step table (dbdgan.graph.STEPS) rendered as DVC stages: the repository's dvc.yaml and a run folder's.

Every stage depends on the whole library (any module may change a step's result). Where things are (the CLI, the
raw dataset, the MLflow store and names) are DVC variables of inputs.yaml, since params.yaml holds
hyperparameters only; the CLI is a path there, so `dvc repro` needs nothing on PATH. What a stage passes comes
from the step's row: its artifacts' paths, its scratch folders, the options DVC always passes (`Option.dvc_var`),
the tracking and registry names of a step that tracks or registers, and `--init` / `--extra` to the steps that
take them when a run folder asks for them (dbdgan.run_folder).
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Sequence
from typing import Any

from dbdgan import graph
from dbdgan.evaluation.extra import EXTRA_DIR

DVC_CODE = "src/dbdgan"
DVC_INPUTS_FILE = "inputs.yaml"
DVC_RAW_VAR = graph.RAW.dvc_var  # the raw dataset folder that prepare reads
# the launcher that finds the Makefile's virtual environment, also from a queued experiment's temporary copy
DVC_CLI = "scripts/dbdgan"
DVC_VARS = {DVC_RAW_VAR: "", "cli": DVC_CLI, "tracking_uri": "", "experiment": "dbdgan",
            "teacher_name": "dbd-teacher", "student_name": "dbd-student"}
# What `dvc plots show/diff` draws: the evaluate step's curve CSVs (teacher, student, baselines) and PNGs.
DVC_PLOTS: list[Any] = [
    {"precision_recall": {"template": "linear", "x": "recall", "y": {
        f"metrics/plots/pr_{name}.csv": "precision" for name in ("teacher", "student", "baseline_laplacian")}}},
    {"f_vs_threshold": {"template": "linear", "x": "threshold", "y": {
        f"metrics/plots/f_{name}.csv": "f"
        for name in ("teacher", "student", "baseline_laplacian", "baseline_all_blurred")}}},
    "metrics/plots/curves.png",
    "metrics/plots/grid.png",
]
DVC_HEADER = """\
# The pipeline `dbdgan.graph.STEPS` implies, as DVC stages: each calls one `dbdgan` subcommand with its input
# and output paths spelled out (params.yaml holds hyperparameters only). Generated: after changing the step
# table, run `dbdgan steps --dvc > dvc.yaml` (tests/test_graph.py checks that they agree). inputs.yaml holds the
# variables: the CLI, the raw data folder of a real data.source, the MLflow store, experiment and model names.
# Metrics and plot data are small and go to git (cache: false); data and models go to the DVC cache and remote.
"""
_NO_CACHE = {"cache": False}


def stage(one: graph.Step, code: str = DVC_CODE, init_from: str | None = None,
          extra: Sequence[Any] = ()) -> dict[str, Any]:
    """One step's stage (see `dvc_stages` for the arguments)."""
    out = graph.ARTIFACTS[one.output]
    always = [option for option in one.options if option.dvc_var]
    args = [f"{option.flag} \"${{{option.dvc_var}}}\"" for option in always]
    args += [f"{graph.ARTIFACTS[name].flag} {graph.ARTIFACTS[name].path}" for name in one.inputs]
    args += [f"--{arg} {path}" for arg, path in one.scratch]
    deps: list[str] = []
    for name in (*one.inputs, *(graph.step(s).output for s in one.after)):
        deps.extend(graph.ARTIFACTS[name].dvc_deps or [graph.ARTIFACTS[name].path])
    if init_from and one.takes(graph.INIT.argument):
        init = f"{init_from.rstrip('/')}/{out.path}"
        args.append(f"{graph.INIT.flag} {init}")
        deps.append(init)
    scores_extra = bool(extra) and one.takes(graph.EXTRA.argument)  # datasets beside the main split, outside
    if scores_extra:
        args += [f"{graph.EXTRA.flag} {shlex.quote(dataset.spec())}" for dataset in extra]
        deps += [str(dataset.path) for dataset in extra]
    if one.tracked:
        args += ['--tracking-uri "${tracking_uri}"', '--experiment "${experiment}"']
    if one.registers:
        args += ['--teacher-name "${teacher_name}"', '--student-name "${student_name}"']
    cmd = " ".join(["${cli}", one.command, *args, f"--out {out.path}"])
    result: dict[str, Any] = {"cmd": cmd, "deps": [*deps, code], "params": list(one.params)}
    if always:
        result["params"].append({DVC_INPUTS_FILE: [option.dvc_var for option in always]})
    result.update(copy.deepcopy(out.dvc_outs) or {"outs": [out.path]})
    if scores_extra:
        result["outs"].append({f"{out.path}/{EXTRA_DIR}": _NO_CACHE})
    if not one.cached:
        # a side effect that no output records (what a store holds): DVC could not tell that a fresh store has
        # none of these versions, so it runs on every repro (a model file already registered reuses its version)
        result["always_changed"] = True
    return {key: value for key, value in result.items() if value != []}  # an empty section: none declared


def dvc_stages(code: str = DVC_CODE, until: str | None = None, init_from: str | None = None,
               extra: Sequence[Any] = ()) -> dict[str, Any]:
    """The `stages:` of a dvc.yaml as STEPS implies them (tests compare the repository's file with this).

    `code`: the library folder the stages depend on; `until`: the last step; `init_from`: a run folder (relative
    to the dvc.yaml) whose teacher and student the trainings start from; `extra`: datasets (absolute
    `dbdgan.evaluation.extra.ExtraDataset`s) that evaluate scores beside the main split, into metrics/extra/.
    """
    chain = graph.steps_until(until) if until else graph.STEPS
    return {one.name: stage(one, code, init_from, extra) for one in chain}


def dvc_file(code: str = DVC_CODE, until: str | None = None, init_from: str | None = None,
             extra: Sequence[Any] = ()) -> dict[str, Any]:
    """A whole dvc.yaml: variables from inputs.yaml, the stages, and the plots when the scores are among them."""
    stages = dvc_stages(code, until, init_from, extra)
    tree: dict[str, Any] = {"vars": [DVC_INPUTS_FILE], "stages": stages}
    if graph.producer("scores").name in stages:
        tree["plots"] = copy.deepcopy(DVC_PLOTS)
    return tree


def dvc_yaml_text(tree: dict[str, Any]) -> str:
    """dvc.yaml's text: the header comment, then the tree (anchors spelled out, so the file reads plainly)."""
    import yaml

    class _Plain(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return DVC_HEADER + yaml.dump(tree, Dumper=_Plain, sort_keys=False, width=120)
