"""The pipeline declared once: its steps, the files between them, the params each reads, and every other fact
about a step (its options, whether it tracks or registers, how KFP caches, retries and places it, its summary).

This module is the table, `STEPS` and `ARTIFACTS`, and nothing renders it here: the CLI's step commands
(dbdgan.cli), the DVC stages of dvc.yaml and of a run folder (dbdgan.dvc_pipeline; `make train-real` writes a
run folder's with `dbdgan steps --dvc --root DIR` and runs `dvc repro` in it) and the KFP pipeline
(dbdgan_kfp.pipelines) all read it; tests check each against it. A step's function in `dbdgan.steps` takes
its inputs and its output by their artifact names (`dataset=`, `teacher=`, ... and `out=`) and the other
arguments its row declares (`Step.arguments`); `steps.call` passes exactly those and refuses anything else
(the runner lives with the functions: this table imports none of the modules that read it).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
class Option:
    """A command-line option of a step beyond its artifacts: an argument of its function or a params key."""

    flag: str  # e.g. --input
    help: str = ""
    argument: str = ""  # the keyword of the step function it fills, or:
    param: str = ""  # the params key it sets (`prepare --source cuhk` is `prepare --set data.source=cuhk`)
    kind: str = "text"  # how it is read: text, path, models ([NAME=]FILE_OR_URI, repeatable), extra (repeatable)
    choices: tuple[str, ...] = ()
    # a DVC stage always passes it, as this variable of inputs.yaml (and reruns when the variable changes)
    dvc_var: str = ""

    def __post_init__(self) -> None:
        if bool(self.argument) == bool(self.param):
            raise ValueError(f"option {self.flag}: give exactly one of argument= (a step function's keyword) "
                             "and param= (a params key)")

    @property
    def dest(self) -> str:
        """Where the parsed value lies in the CLI's namespace."""
        return self.argument or self.param


@dataclass(frozen=True)
class Resources:
    """CPU and memory of one task's container: requests, and limits (default: the requests, so that the pod
    gets the Guaranteed QoS class and is the last to be evicted)."""

    cpu: str
    memory: str
    cpu_limit: str | None = None
    memory_limit: str | None = None


HOUR = 3600


@dataclass(frozen=True)
class Pod:
    """How a step's task runs under KFP: what a cluster compile gives its pod (pipelines/k8s.py), and whether a
    failed attempt may run again (on a cluster and under kfp.local)."""

    resources: Resources = Resources("1", "2Gi")
    # each attempt's deadline (activeDeadlineSeconds): a stuck data loader or NCCL call fails the task (and a
    # retry starts) instead of holding a node
    timeout_s: int = HOUR
    gpu: bool = False  # gets the GPUs a cluster compile asks for (--gpus): one process per GPU
    s3: bool = False  # gets the S3 Secret: it reads or writes s3:// itself
    # safe to run again after a failure (a pre-empted node, a timeout): a training task resumes from its
    # checkpoint; registering is not idempotent (each attempt adds versions), the MLflow client's own bounded
    # retries cover transient errors there
    retry: bool = True


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _as_is(result: Any) -> Any:
    return result


def _one_line_json(brief: Any) -> str:
    return json.dumps(brief, default=str)


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
    tracked: bool = False  # takes `tracking`: logs to MLflow (--tracking-uri, --experiment)
    registers: bool = False  # takes `names`: the registered model names (--teacher-name, --student-name)
    options: tuple[Option, ...] = ()  # its other options, each an argument of its function or a params key
    # its result is decided by its inputs: KFP may reuse it. False for a side effect (registering): KFP never
    # reuses it and DVC runs it on every repro (no output of it records what a store holds)
    cached: bool = True
    pod: Pod = Pod()
    # what the command prints: `brief` makes the JSON of `--json` from the function's result (no params,
    # histories or gate settings: its files hold those), `summary` the one line printed without --json
    brief: Callable[[Any], Any] = _as_is
    summary: Callable[[Any], str] = _one_line_json

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def arguments(self) -> tuple[str, ...]:
        """The keyword arguments a runner gives its function in dbdgan.steps (after `params`), and no others."""
        return (*self.inputs, "out", *(argument for argument, _ in self.scratch),
                *(("tracking",) if self.tracked else ()), *(("names",) if self.registers else ()),
                *(option.argument for option in self.options if option.argument))

    def takes(self, argument: str) -> bool:
        return argument in self.arguments


# What each step prints (Step.brief, Step.summary). Never `name=value`: Katib's default metrics collector reads
# every line of a trial's output as such pairs (tests/test_training.py), and a summary must not add epochs.
def _prepare_brief(manifest: Any) -> dict[str, Any]:
    return {"manifest": str(manifest)}


def _prepare_line(brief: dict[str, Any]) -> str:
    return f"prepared the dataset: {brief['manifest']}"


def _validate_brief(report: Any) -> Any:
    return getattr(report, "summary", str(report))


def _validate_line(brief: Any) -> str:
    if not isinstance(brief, dict):
        return str(brief)
    splits = ", ".join(f"{split} {count}" for split, count in (brief.get("split_counts") or {}).items())
    warnings = len(brief.get("warnings") or [])
    return (f"valid: {brief.get('n_rows')} rows ({splits}), {brief.get('evaluated_expectations')} expectations "
            f"passed, {warnings} warning{'' if warnings == 1 else 's'}; Data Docs {brief.get('data_docs')}")


def _training_brief(result: Any) -> Any:
    if isinstance(result, dict) and "history" in result:
        best = result.get("best") or {}
        return {"stage": result.get("stage"), "kept_epoch": best.get("epoch"), result.get("best_metric", "best"):
                result.get("best_score"), "mlflow_run_id": result.get("mlflow_run_id")}
    return result  # another process of a multi-process run: {"stage", "rank"}


def _training_line(brief: Any) -> str:
    if not isinstance(brief, dict) or "kept_epoch" not in brief:
        return f"{brief.get('stage')}: process {brief.get('rank')} done" if isinstance(brief, dict) else str(brief)
    metric, score = next((key, value) for key, value in brief.items()
                         if key not in ("stage", "kept_epoch", "mlflow_run_id"))
    run = f"MLflow run {brief['mlflow_run_id']}" if brief.get("mlflow_run_id") else "not tracked"
    return f"{brief['stage']}: kept epoch {brief['kept_epoch']} ({metric} {_number(score, 4)}); {run}"


def _evaluate_brief(result: Any) -> Any:
    if not isinstance(result, dict):
        return result
    return {name: {key: row.get(key) for key in ("infocus_max_f", "max_f", "mae")} for name, row in result.items()}


def _evaluate_line(brief: Any) -> str:
    if not isinstance(brief, dict):
        return str(brief)
    rows = ", ".join(f"{name} {_number(row.get('infocus_max_f'))} / {_number(row.get('mae'))}"
                     for name, row in brief.items())
    return f"in-focus max-F / MAE: {rows} (`dbdgan results` for the table)"


def _register_brief(result: Any) -> Any:
    if not isinstance(result, dict):
        return result
    return {role: {"model_uri": entry.get("model_uri"), "reused": entry.get("reused"),
                   **({"gate": entry["gate"].get("result"), "reason": entry["gate"].get("reason")}
                      if entry.get("gate") else {})} for role, entry in result.items()}


def _register_line(brief: Any) -> str:
    if not isinstance(brief, dict):
        return str(brief)
    models = ", ".join(f"{role} {entry.get('model_uri')}" + (" (the same file: its version reused)"
                                                              if entry.get("reused") else "")
                       for role, entry in brief.items())
    text = f"registered {models} (alias challenger)"
    for role, entry in brief.items():
        if entry.get("gate"):
            text += f"; gate on the {role}: {entry['gate']}" + (f" ({entry['reason']})" if entry.get("reason") else "")
    return text


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
    # a repro on another machine leaves dvc.lock as committed (register, uncached, still runs on every repro)
    Artifact("registered", "reports/registered.json", "--registered", dvc_outs={"outs": []}),
)}

_LAYOUTS = ("cuhk", "dut", "szu", "folder")
_POLARITIES = ("blurred-white", "sharp-white")
# the raw dataset folder prepare reads: a run input (DVC variable raw_data of inputs.yaml), never a param
RAW = Option("--input", "raw dataset folder of the data.source layout (none for synthetic)", argument="raw",
             kind="path", dvc_var="raw_data")
# a model of the same network to start from: what synthetic pre-training hands the two trainings
INIT = Option("--init", "a model file of the same network to start from (pre-training)", argument="init",
              kind="path")
EXTRA = Option("--extra", "a raw dataset that evaluate also scores whole, its numbers under LABEL. beside the main "
                          "ones and its files in OUT/extra/LABEL/; LAYOUT defaults to LABEL (szu=PATH reads "
                          "SZU-BD's release layout), POLARITY to the layout's (repeatable)",
               argument="extra", kind="extra")

_TRAINING = ("seed", "deterministic", "model", "evaluate.beta2")
_TRACKED = ("device", "register.service_timeout_s")
_TRAINING_POD = Pod(Resources("8", "32Gi"), 72 * HOUR, gpu=True)  # the paper profile: about a day on one GPU
STEPS = (
    Step("prepare", (), "dataset", ("seed", "data"),
         options=(Option("--source", "data.source", param="data.source",
                         choices=("synthetic", *_LAYOUTS)),
                  RAW,
                  Option("--polarity", "mask polarity of --input", param="data.polarity", choices=_POLARITIES)),
         pod=Pod(Resources("2", "4Gi"), 2 * HOUR, s3=True),  # an s3:// data_uri
         brief=_prepare_brief, summary=_prepare_line),
    Step("validate", ("dataset",), "validation", ("data.min_size", "data.max_pixels"),
         pod=Pod(Resources("2", "4Gi"), HOUR, s3=True),  # a failed report goes to reports_uri
         brief=_validate_brief, summary=_validate_line),
    Step("train_teacher", ("dataset",), "teacher", (*_TRAINING, "train_teacher"), after=("validate",),
         scratch=(("checkpoints", "checkpoints/teacher"),), settings=_TRACKED, tracked=True, options=(INIT,),
         pod=_TRAINING_POD, brief=_training_brief, summary=_training_line),
    Step("distill_student", ("dataset", "teacher"), "student", (*_TRAINING, "distill_student"),
         scratch=(("checkpoints", "checkpoints/student"),), settings=_TRACKED, tracked=True, options=(INIT,),
         pod=_TRAINING_POD, brief=_training_brief, summary=_training_line),
    Step("evaluate", ("dataset", "teacher", "student"), "scores", ("seed", "evaluate", "data.max_pixels"),
         settings=("register.service_timeout_s",), tracked=True,
         options=(Option("--model", "more models to score: file or MLflow URI such as "
                                    "models:/dbd-student@champion (repeatable)", argument="models", kind="models"),
                  Option("--split", "the split to score (default: evaluate.split)", argument="split",
                         choices=("train", "val", "test")),
                  Option("--layout", "--data is a raw dataset of this layout (all of it is scored), not a prepared "
                                     "folder", argument="layout", choices=_LAYOUTS),
                  Option("--polarity", "mask polarity of a raw folder", argument="polarity", choices=_POLARITIES),
                  EXTRA),
         pod=Pod(Resources("4", "8Gi"), 2 * HOUR), brief=_evaluate_brief, summary=_evaluate_line),
    Step("register", ("dataset", "teacher", "student", "scores"), "registered", ("evaluate", "register"),
         settings=("seed", "deterministic", "device", "data", "model", "train_teacher", "distill_student"),
         tracked=True, registers=True, cached=False,
         pod=Pod(Resources("1", "2Gi"), HOUR // 2, s3=True, retry=False),  # s3: its summary goes to reports_uri
         brief=_register_brief, summary=_register_line),
)
# Steps whose models can start from a pre-trained run's (`init`): synthetic pre-training runs STEPS up to them.
INIT_STEPS = tuple(one.name for one in STEPS if one.takes(INIT.argument))


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

