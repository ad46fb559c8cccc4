"""The pipeline declared once: its steps, the files between them and the params each reads.

The CLI's step commands, `dbdgan run-all` (what `make train-real` runs), the stages of dvc.yaml and the KFP
pipeline are all derived from `STEPS`; tests check each against it. A step's function in `dbdgan.steps`
takes its inputs and its output by their artifact names (`dataset=`, `teacher=`, ... and `out=`).
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dbdgan.evaluation.extra import EXTRA_DIR


@dataclass(frozen=True)
class Artifact:
    """A file or folder that one step writes and later steps read."""

    name: str  # argument of the step functions, KFP input/output name
    path: str  # default location, relative to the run's root folder
    flag: str  # CLI option of the steps that read it
    # How dvc.yaml declares it when it is a stage's output (section -> entries) or input (paths), when that
    # differs from the plain path: DVC metrics must be separate files, and small ones go to git (cache: false)
    # so that `dvc metrics diff` / `dvc plots diff` / `dvc exp show` compare commits; models stay cached.
    dvc_outs: dict[str, list[Any]] = field(default_factory=dict)
    dvc_deps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    name: str  # function in dbdgan.steps, DVC stage, KFP component and task
    inputs: tuple[str, ...]  # artifact names
    output: str  # artifact name
    params: tuple[str, ...]  # params.yaml keys the step reads (DVC reruns it when they change)
    after: tuple[str, ...] = ()  # steps that must succeed first although their output is not read
    scratch: tuple[tuple[str, str], ...] = ()  # (argument, default path): working files, not outputs
    # params the step also reads that do not change its result (DVC does not rerun on them): client timeouts,
    # and for register the whole run's params, which it records as lineage
    settings: tuple[str, ...] = ()
    cached: bool = True  # KFP may reuse its outputs for identical inputs (never for a side effect)

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")


_NO_CACHE = {"cache": False}
ARTIFACTS = {a.name: a for a in (
    Artifact("dataset", "data/prepared", "--data"),
    # DVC tracks the verdict, not the Data Docs beside it (HTML with the run's time in it)
    Artifact("validation", "reports/validation", "--validation",
             dvc_outs={"outs": ["reports/validation/validation.json"]},
             dvc_deps=("reports/validation/validation.json",)),
    Artifact("teacher", "models/teacher.pt", "--teacher"),
    Artifact("student", "models/student.pt", "--student"),
    Artifact("scores", "metrics", "--scores",
             dvc_outs={"metrics": [{f"metrics/{name}.json": _NO_CACHE} for name in
                                   ("teacher", "student", "baseline_all_blurred", "baseline_laplacian")],
                       "outs": [{"metrics/details": _NO_CACHE}, {"metrics/plots": _NO_CACHE}, "metrics/onnx"]},
             # metrics/efficiency (timings) is written beside them but is no output: it differs on every run
             # (dbdgan.evaluation.scores), and a timing that moved must not make register rerun
             dvc_deps=("metrics/teacher.json", "metrics/student.json", "metrics/details")),
    # the record of what this store registered (run ids, versions) differs per store: no DVC output, so that
    # a repro on another machine leaves dvc.lock as committed (register still reruns when its inputs change)
    Artifact("registered", "reports/registered.json", "--registered", dvc_outs={"outs": []}),
)}

_TRAINING = ("seed", "deterministic", "model", "evaluate.beta2")
_TRACKED = ("device", "register.service_timeout_s")
STEPS = (
    Step("prepare", (), "dataset", ("seed", "data")),
    Step("validate", ("dataset",), "validation", ("data.min_size", "data.max_pixels")),
    Step("train_teacher", ("dataset",), "teacher", (*_TRAINING, "train_teacher"), after=("validate",),
         scratch=(("checkpoints", "checkpoints/teacher"),), settings=_TRACKED),
    Step("distill_student", ("dataset", "teacher"), "student", (*_TRAINING, "distill_student"),
         scratch=(("checkpoints", "checkpoints/student"),), settings=_TRACKED),
    Step("evaluate", ("dataset", "teacher", "student"), "scores", ("seed", "evaluate", "data.max_pixels"),
         settings=("register.service_timeout_s",)),
    Step("register", ("dataset", "teacher", "student", "scores"), "registered", ("evaluate", "register"),
         settings=("seed", "deterministic", "device", "data", "model", "train_teacher", "distill_student"),
         cached=False),
)
# Steps whose models can start from a pre-trained run's (`init`): synthetic pre-training runs STEPS up to them.
INIT_STEPS = ("train_teacher", "distill_student")

# dvc.yaml: every stage depends on the whole library (any module may change a step's result). Where things are
# (the CLI, the raw dataset, the MLflow store and names) are DVC variables of inputs.yaml, since params.yaml holds
# hyperparameters only; the CLI is a path there, so `dvc repro` needs nothing on PATH.
DVC_CODE = "src/dbdgan"
DVC_INPUTS_FILE = "inputs.yaml"
DVC_RAW_VAR = "raw_data"
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


def step(name: str) -> Step:
    for one in STEPS:
        if one.name == name:
            return one
    raise KeyError(f"no step {name!r}; steps: {', '.join(s.name for s in STEPS)}")


def steps_until(last: str) -> tuple[Step, ...]:
    """The steps up to and including `last`, in order (what synthetic pre-training runs)."""
    names = [s.name for s in STEPS]
    return STEPS[: names.index(step(last).name) + 1]


def step_params(one: Step, tree: dict[str, Any]) -> dict[str, Any]:
    """The part of a params tree that `one` reads (its params and settings), as a nested tree.

    What a KFP task is given, so that its cache key changes only with what can change its result: a
    distillation setting leaves prepare's and the teacher's tasks as they were.
    """
    picked: dict[str, Any] = {}
    for dotted in (*one.params, *one.settings):
        keys = dotted.split(".")
        node: Any = tree
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                raise KeyError(f"step {one.name} reads params key {dotted!r}, which the params tree lacks")
            node = node[key]
        target = picked
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = copy.deepcopy(node)
    return picked


def producer(artifact: str) -> Step:
    return next(s for s in STEPS if s.output == artifact)


def _stage(one: Step, code: str, init_from: str | None, extra: Sequence[Any] = ()) -> dict[str, Any]:
    out = ARTIFACTS[one.output]
    args = [f"{ARTIFACTS[name].flag} {ARTIFACTS[name].path}" for name in one.inputs]
    if one.name == "prepare":
        args.insert(0, f"--input \"${{{DVC_RAW_VAR}}}\"")
    args += [f"--{arg} {path}" for arg, path in one.scratch]
    deps: list[str] = []
    for name in (*one.inputs, *(step(s).output for s in one.after)):
        deps.extend(ARTIFACTS[name].dvc_deps or [ARTIFACTS[name].path])
    if init_from and one.name in INIT_STEPS:
        init = f"{init_from.rstrip('/')}/{ARTIFACTS[one.output].path}"
        args.append(f"--init {init}")
        deps.append(init)
    if extra and one.name == "evaluate":  # datasets scored beside the main split, outside the run folder
        args += [f"--extra {shlex.quote(dataset.spec())}" for dataset in extra]
        deps += [str(dataset.path) for dataset in extra]
    if accepts(one, "tracking"):
        args += ['--tracking-uri "${tracking_uri}"', '--experiment "${experiment}"']
    if accepts(one, "names"):
        args += ['--teacher-name "${teacher_name}"', '--student-name "${student_name}"']
    cmd = " ".join(["${cli}", one.command, *args, f"--out {out.path}"])
    stage: dict[str, Any] = {"cmd": cmd, "deps": [*deps, code], "params": list(one.params)}
    if one.name == "prepare":
        stage["params"].append({DVC_INPUTS_FILE: [DVC_RAW_VAR]})
    stage.update(copy.deepcopy(out.dvc_outs) or {"outs": [out.path]})
    if extra and one.name == "evaluate":
        stage["outs"].append({f"{out.path}/{EXTRA_DIR}": _NO_CACHE})
    if not stage.get("outs") and one.name == "register":
        # no output records it, so DVC could not tell that a fresh store has none of these versions: register
        # runs on every repro, and a model file already registered reuses its version (nothing is duplicated)
        stage["always_changed"] = True
    return {key: value for key, value in stage.items() if value != []}  # an empty section: none declared


def dvc_stages(code: str = DVC_CODE, until: str | None = None, init_from: str | None = None,
               extra: Sequence[Any] = ()) -> dict[str, Any]:
    """The `stages:` of a dvc.yaml as STEPS implies them (tests compare the repository's file with this).

    `code`: the library folder the stages depend on; `until`: the last step; `init_from`: a run folder (relative
    to the dvc.yaml) whose teacher and student the trainings start from; `extra`: datasets (absolute
    `dbdgan.evaluation.extra.ExtraDataset`s) that evaluate scores beside the main split, into metrics/extra/.
    """
    chain = steps_until(until) if until else STEPS
    return {one.name: _stage(one, code, init_from, extra) for one in chain}


def dvc_file(code: str = DVC_CODE, until: str | None = None, init_from: str | None = None,
             extra: Sequence[Any] = ()) -> dict[str, Any]:
    """A whole dvc.yaml: variables from inputs.yaml, the stages, and the plots when evaluate is among them."""
    stages = dvc_stages(code, until, init_from, extra)
    tree: dict[str, Any] = {"vars": [DVC_INPUTS_FILE], "stages": stages}
    if "evaluate" in stages:
        tree["plots"] = copy.deepcopy(DVC_PLOTS)
    return tree


def dvc_yaml_text(tree: dict[str, Any]) -> str:
    """dvc.yaml's text: the header comment, then the tree (anchors spelled out, so the file reads plainly)."""
    import yaml

    class _Plain(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return DVC_HEADER + yaml.dump(tree, Dumper=_Plain, sort_keys=False, width=120)


def accepts(one: Step, argument: str) -> bool:
    """Whether the step's function in dbdgan.steps takes `argument`."""
    import inspect

    from dbdgan import steps

    return argument in inspect.signature(getattr(steps, one.name)).parameters


def call(one: Step, params: Any, **available: Any) -> Any:
    """Run the step's function with the arguments of `available` that it takes (None: its own default)."""
    from dbdgan import steps

    return getattr(steps, one.name)(params, **{key: value for key, value in available.items()
                                               if value is not None and accepts(one, key)})
