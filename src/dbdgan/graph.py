"""The pipeline declared once: its steps, the files between them and the params each reads.

The CLI's step commands, `dbdgan run-all` (what `make train-real` runs), the stages of dvc.yaml and the KFP
pipeline are all derived from `STEPS`; tests check each against it. A step's function in `dbdgan.steps`
takes its inputs and its output by their artifact names (`dataset=`, `teacher=`, ... and `out=`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Artifact:
    """A file or folder that one step writes and later steps read."""

    name: str  # argument of the step functions, KFP input/output name
    path: str  # default location, relative to the run's root folder
    flag: str  # CLI option of the steps that read it
    # How dvc.yaml declares it when it is a stage's output (section -> entries) or input (paths), when that
    # differs from the plain path: DVC metrics must be separate files, and some outputs are not cached.
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

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")


_NO_CACHE = {"cache": False}
ARTIFACTS = {a.name: a for a in (
    Artifact("dataset", "data/prepared", "--data"),
    Artifact("validation", "reports/validation", "--validation",
             dvc_outs={"outs": [{"reports/validation": _NO_CACHE}]}, dvc_deps=("reports/validation/validation.json",)),
    Artifact("teacher", "models/teacher.pt", "--teacher"),
    Artifact("student", "models/student.pt", "--student"),
    Artifact("scores", "metrics", "--scores",
             dvc_outs={"metrics": [{f"metrics/{name}.json": _NO_CACHE} for name in
                                   ("teacher", "student", "baseline_all_blurred", "baseline_laplacian")],
                       "outs": [{"metrics/plots": _NO_CACHE}, "metrics/onnx"]},
             dvc_deps=("metrics/teacher.json", "metrics/student.json")),
    Artifact("registered", "reports/registered.json", "--registered",
             dvc_outs={"outs": [{"reports/registered.json": _NO_CACHE}]}),
)}

_TRAINING = ("seed", "deterministic", "model", "evaluate.beta2")
STEPS = (
    Step("prepare", (), "dataset", ("seed", "data")),
    Step("validate", ("dataset",), "validation", ("data.min_size", "data.max_pixels")),
    Step("train_teacher", ("dataset",), "teacher", (*_TRAINING, "train_teacher"), after=("validate",),
         scratch=(("checkpoints", "checkpoints/teacher"),)),
    Step("distill_student", ("dataset", "teacher"), "student", (*_TRAINING, "distill_student"),
         scratch=(("checkpoints", "checkpoints/student"),)),
    Step("evaluate", ("dataset", "teacher", "student"), "scores", ("seed", "evaluate", "data.max_pixels")),
    Step("register", ("dataset", "teacher", "student", "scores"), "registered", ("evaluate", "register")),
)
# Steps whose models can start from a pre-trained run's (`init`): synthetic pre-training runs STEPS up to them.
INIT_STEPS = ("train_teacher", "distill_student")

# dvc.yaml: every stage depends on the whole library (any module may change a step's result), and prepare
# reads the raw dataset folder named in inputs.yaml (a DVC variable, since params.yaml holds no paths).
DVC_CODE = "src/dbdgan"
DVC_INPUTS_FILE = "inputs.yaml"
DVC_RAW_VAR = "raw_data"


def step(name: str) -> Step:
    for one in STEPS:
        if one.name == name:
            return one
    raise KeyError(f"no step {name!r}; steps: {', '.join(s.name for s in STEPS)}")


def steps_until(last: str) -> tuple[Step, ...]:
    """The steps up to and including `last`, in order (what synthetic pre-training runs)."""
    names = [s.name for s in STEPS]
    return STEPS[: names.index(step(last).name) + 1]


def producer(artifact: str) -> Step:
    return next(s for s in STEPS if s.output == artifact)


def _stage(one: Step) -> dict[str, Any]:
    out = ARTIFACTS[one.output]
    args = [f"{ARTIFACTS[name].flag} {ARTIFACTS[name].path}" for name in one.inputs]
    if one.name == "prepare":
        args.insert(0, f"--input \"${{{DVC_RAW_VAR}}}\"")
    args += [f"--{arg} {path}" for arg, path in one.scratch]
    cmd = " ".join([f"dbdgan {one.command}", *args, f"--out {out.path}"])
    deps: list[str] = []
    for name in (*one.inputs, *(step(s).output for s in one.after)):
        deps.extend(ARTIFACTS[name].dvc_deps or [ARTIFACTS[name].path])
    stage: dict[str, Any] = {"cmd": cmd, "deps": [*deps, DVC_CODE], "params": list(one.params)}
    if one.name == "prepare":
        stage["params"].append({DVC_INPUTS_FILE: [DVC_RAW_VAR]})
    stage.update(copy.deepcopy(out.dvc_outs) or {"outs": [out.path]})
    return stage


def dvc_stages() -> dict[str, dict[str, Any]]:
    """The `stages:` of dvc.yaml as STEPS implies them (tests compare the file with this)."""
    return {one.name: _stage(one) for one in STEPS}


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
