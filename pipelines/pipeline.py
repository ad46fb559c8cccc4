"""The dbdgan KFP pipeline, wired from the step table (dbdgan.graph.STEPS): each step's component gets its
inputs from the tasks that produce them, then the pipeline parameters it takes by name.

Optionally (compile-time) preceded by synthetic pre-training (the steps up to distill_student on their own
params), whose models initialise the two trainings. After registration, the condition is the promotion gate's
own decision (promotion.run_gate, from params `register.gate`, returned by the register component): the same
decision the CLI and DVC make.

`build_pipeline` returns a fresh pipeline function; the same function is compiled for a cluster (with
`ClusterSettings`) or run by `kfp.local` (without). Caching is on for the deterministic steps (prepare,
validate, evaluate: same inputs, same outputs) and off for training (GPU kernels are not bitwise
reproducible, and each run should leave its MLflow training run) and for registration (a side effect).
"""

# No `from __future__ import annotations` here: KFP reads the pipeline signature's real types.
import copy
import json
from typing import Any

import yaml
from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from dbdgan import graph
from dbdgan.config import Params, params_from_dict
from dbdgan.tracking import DEFAULT_EXPERIMENT, ModelNames
from dbdgan_kfp.components.ops import ops
from dbdgan_kfp.pipelines.k8s import PRETRAIN_PREFIX, ClusterSettings, apply

PIPELINE_NAME = "dbdgan-train"
PROMOTED = "promoted"
UNCACHED = (*graph.INIT_STEPS, "register")


def check_pretrain(pretrain_tree: dict[str, Any], params: Params) -> Params:
    """Pre-training params must build the same networks as the real run, or its weights cannot be loaded."""
    pretrain = params_from_dict(copy.deepcopy(pretrain_tree), source="pretrain params")
    for key in ("teacher", "teacher_kwargs", "student", "student_kwargs"):
        mine, theirs = getattr(pretrain.model, key), getattr(params.model, key)
        if mine != theirs:
            raise ValueError(f"pretrain params: model.{key} is {mine!r} but the real run's is {theirs!r}; "
                             "pre-training must train the same networks")
    if pretrain.data.source != "synthetic":
        raise ValueError(f"pretrain params: data.source must be 'synthetic', got {pretrain.data.source!r}")
    return pretrain


def add_steps(op: Any, chain: tuple[graph.Step, ...], values: dict[str, Any],
              init: dict[str, Any] | None = None, prefix: str = "") -> dict[str, Any]:
    """One task per step of `chain`; returns them keyed `<prefix><step>` (the keys k8s.apply reads).

    values: pipeline parameters, passed to each component that has an input of that name. init: step name ->
    a Model output the step's training starts from.
    """
    tasks: dict[str, Any] = {}
    for one in chain:
        component = getattr(op, one.name)
        wanted = component.component_spec.inputs or {}
        kwargs = {name: tasks[graph.producer(name).name].outputs[name] for name in one.inputs}
        kwargs.update({key: value for key, value in values.items() if key in wanted})
        if init and one.name in init:
            kwargs["init"] = init[one.name]
        task = component(**kwargs)
        task.set_display_name(f"{prefix.replace('_', ' ')}{one.name.replace('_', ' ')}")
        task.set_caching_options(one.name not in UNCACHED)
        for before in one.after:
            if before in tasks:
                task.after(tasks[before])
        tasks[one.name] = task
    return {f"{prefix}{name}": task for name, task in tasks.items()}


def build_pipeline(params_text: str = "", cluster: ClusterSettings | None = None,
                   image: str | None = None, pretrain_text: str = "") -> GraphComponent:
    """The pipeline with `params_text` (params.yaml content) as the default of its params_yaml parameter.

    The text is validated here, so a broken params.yaml fails at compile time, not in a pod. The default is
    stored as one line of JSON (valid YAML): the KFP compiler copies defaults into a comment header of the
    IR file, and a multi-line default would break that file.

    pretrain_text (optional): params of a synthetic pre-training (e.g. params.yaml overlaid by
    profiles/synthetic-pretrain.yaml). Then the graph first runs the steps up to distill_student on synthetic
    data, and the real teacher and student start from those weights. These params are fixed at compile time;
    the pre-trained models are not registered.
    """
    tree: Any = (yaml.safe_load(params_text) if params_text.strip() else None) or {}
    params = params_from_dict(copy.deepcopy(tree), source="params_yaml")
    params_default = json.dumps(tree, separators=(",", ":"))
    pretrain_tree: Any = (yaml.safe_load(pretrain_text) if pretrain_text.strip() else None) or {}
    if pretrain_tree:
        check_pretrain(pretrain_tree, params)
    op = ops(image)

    @dsl.pipeline(name=PIPELINE_NAME, description="Distill-DBDGAN: data, teacher, student, registry, gate")
    def dbdgan_train(
        params_yaml: str = params_default,
        overrides: list = [],  # noqa: B006 -- KFP reads the default; it is never mutated
        data_uri: str = "",
        reports_uri: str = "",
        mlflow_tracking_uri: str = "",
        experiment: str = DEFAULT_EXPERIMENT,
        pretrain_experiment: str = f"{DEFAULT_EXPERIMENT}-pretrain",
        teacher_name: str = ModelNames.teacher,
        student_name: str = ModelNames.student,
    ) -> None:
        """Train, register and gate a defocus blur detector.

        params_yaml/overrides: params.yaml text and `dotted.key=value` overrides (hyperparameters). data_uri:
        the raw dataset ("" for synthetic data, a folder, or s3://bucket/prefix). reports_uri:
        s3://bucket/prefix for reports ("" = off). mlflow_tracking_uri: "" = the pod's MLFLOW_TRACKING_URI.
        experiment, teacher_name, student_name: where runs are tracked and under which names models register.
        """
        values = {"params_yaml": params_yaml, "overrides": overrides, "data_uri": data_uri,
                  "reports_uri": reports_uri, "mlflow_tracking_uri": mlflow_tracking_uri, "experiment": experiment,
                  "teacher_name": teacher_name, "student_name": student_name,
                  "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        tasks: dict[str, Any] = {}
        init = None
        if pretrain_tree:
            pre_values = {**values, "params_yaml": json.dumps(pretrain_tree, separators=(",", ":")),
                          "overrides": [], "data_uri": "", "experiment": pretrain_experiment}
            last = graph.INIT_STEPS[-1]
            tasks.update(add_steps(op, graph.steps_until(last), pre_values, prefix=PRETRAIN_PREFIX))
            init = {name: tasks[f"{PRETRAIN_PREFIX}{name}"].outputs[graph.step(name).output]
                    for name in graph.INIT_STEPS}
        steps = add_steps(op, graph.STEPS, values, init)
        tasks.update(steps)
        with dsl.If(reports_uri != "", name="reports-enabled"):
            publish = op.publish_reports(reports_uri=reports_uri, run_id=values["run_id"],
                                         validation=steps["validate"].outputs["validation"],
                                         scores=steps["evaluate"].outputs["scores"])
            publish.set_display_name("publish reports").set_caching_options(False)
            tasks["publish_reports"] = publish
        register = steps["register"]
        with dsl.If(register.outputs["Output"] == PROMOTED, name="student-promoted"):
            champion = op.announce_champion(registered=register.outputs["registered"])
            champion.set_display_name("announce champion").set_caching_options(False)
            tasks["announce_champion"] = champion
        if cluster is not None:
            apply(tasks, cluster)

    return dbdgan_train
