"""The dbdgan KFP pipeline, wired from the step table (dbdgan.graph.STEPS): each step's component gets its
inputs from the tasks that produce them, then the pipeline parameters it takes by name.

Optionally (compile-time) preceded by synthetic pre-training (the steps up to distill_student on their own
params), whose models initialise the two trainings. After registration, the condition is the promotion gate's
own decision (aliases.run_gate, from params `register.gate`, returned by the register component): the same
decision the CLI and DVC make.

`build_pipeline` returns a fresh pipeline function; the same function is compiled for a cluster (with
`ClusterSettings`) or run by `kfp.local` (without). Caching is on for every step whose result its inputs
decide (graph.Step.cached): a changed distillation param reuses the data and the teacher of an earlier run;
registration (a side effect) and the teacher import (an alias may move) always run. What else a task gets
(resources, GPUs, retries, ...) is its step's row too (graph.Step.pod, applied by k8s.py).
"""

# No `from __future__ import annotations` here: KFP reads the pipeline signature's real types.
import json
from typing import Any

import yaml
from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from dbdgan import graph
from dbdgan.config import Params, params_from_dict
from dbdgan.tracking import DEFAULT_EXPERIMENT, ModelNames
from dbdgan_kfp.components.ops import ops
from dbdgan_kfp.pipelines.k8s import PRETRAIN_PREFIX, ClusterSettings, apply, set_retries, step_of

PIPELINE_NAME = "dbdgan-train"
PROMOTED = "promoted"
# The run's workspace (a PVC for the run's lifetime on a cluster): where training checkpoints survive a retry.
DEFAULT_WORKSPACE_SIZE = "20Gi"


def check_pretrain(pretrain: Params, params: Params) -> None:
    """Pre-training params must build the same networks as the real run, or its weights cannot be loaded."""
    for key in ("teacher", "teacher_kwargs", "student", "student_kwargs"):
        mine, theirs = getattr(pretrain.model, key), getattr(params.model, key)
        if mine != theirs:
            raise ValueError(f"pretrain params: model.{key} is {mine!r} but the real run's is {theirs!r}; "
                             "pre-training must train the same networks")
    if pretrain.data.source != "synthetic":
        raise ValueError(f"pretrain params: data.source must be 'synthetic', got {pretrain.data.source!r}")


def _params_json(one: graph.Step, tree: dict[str, Any]) -> str:
    """What one task is given of the params: only the keys its step reads, so that only they key its cache."""
    return json.dumps(graph.step_params(one, tree), sort_keys=True, separators=(",", ":"))


def add_steps(op: Any, chain: tuple[graph.Step, ...], values: dict[str, Any], tree: dict[str, Any],
              init: dict[str, Any] | None = None, prefix: str = "", provided: dict[str, Any] | None = None,
              training: dict[str, Any] | None = None, uncached: tuple[str, ...] = ()) -> dict[str, Any]:
    """One task per step of `chain`; returns them keyed `<prefix><step>` (the keys k8s.apply reads).

    values: pipeline parameters, passed to each component that has an input of that name; tree: the params,
    of which each task gets its step's part. init: step name -> a Model output the step's training starts
    from. provided: artifact name -> an output made outside the chain (an imported teacher). training: inputs
    of the training steps (workspace, nproc).
    """
    tasks: dict[str, Any] = {}
    outputs = dict(provided or {})
    for one in chain:
        component = getattr(op, one.name)
        wanted = component.component_spec.inputs or {}
        kwargs = {name: outputs[name] for name in one.inputs}
        kwargs.update({key: value for key, value in values.items() if key in wanted})
        kwargs["params"] = _params_json(one, tree)
        if one.takes(graph.INIT.argument):  # a training: its checkpoints, its processes
            kwargs.update({**(training or {}), "task": f"{prefix}{one.name}"})
        if init and one.name in init:
            kwargs["init"] = init[one.name]
        task = component(**kwargs)
        task.set_display_name(f"{prefix.replace('_', ' ')}{one.name.replace('_', ' ')}")
        task.set_caching_options(one.cached and one.name not in uncached)
        for before in one.after:
            if before in tasks:
                task.after(tasks[before])
        tasks[one.name] = task
        outputs[one.output] = task.outputs[one.output]
    return {f"{prefix}{name}": task for name, task in tasks.items()}


def _params(text: str, source: str) -> Params:
    """Validated params (defaults filled in): a broken params file fails here, not in a pod."""
    return params_from_dict((yaml.safe_load(text) if text.strip() else None) or {}, source=source)


def build_pipeline(params_text: str = "", cluster: ClusterSettings | None = None,
                   image: str | None = None, pretrain_text: str = "", teacher: str = "",
                   workspace_size: str = DEFAULT_WORKSPACE_SIZE, workspace_storage_class: str = "",
                   local_retries: int = 0, uncached: tuple[str, ...] = ()) -> GraphComponent:
    """The pipeline for `params_text` (params.yaml content with the run's overrides applied).

    The params are validated here, so a broken params.yaml fails at compile time, not in a pod, and each task
    gets the part of them its step reads (`graph.STEPS[*].params` and `.settings`) as a constant: its cache
    key then changes only with what can change its result.

    pretrain_text (optional): params of a synthetic pre-training (e.g. params.yaml overlaid by
    profiles/synthetic-pretrain.yaml). Then the graph first runs the steps up to distill_student on synthetic
    data, and the real teacher and student start from those weights. The pre-trained models are not registered.

    teacher (optional): a teacher trained before (models:/NAME/VERSION, models:/NAME@ALIAS, s3://... or a file
    path the pods can read). Then there is no train_teacher task: an import_teacher task fetches it.

    workspace_size: the run's workspace ("" or "0": none), where training checkpoints survive a retried task.
    local_retries: retries of each task without cluster settings (kfp.local); a cluster compile takes them
    from `cluster.retries`. uncached: steps never to reuse a cached result in this pipeline (prepare, when the
    S3 dataset's digest could not be read).
    """
    params = _params(params_text, "pipeline params")
    tree = params.model_dump(mode="json")
    pretrain_tree: dict[str, Any] = {}
    if pretrain_text.strip():
        pretrain = _params(pretrain_text, "pretrain params")
        check_pretrain(pretrain, params)
        pretrain_tree = pretrain.model_dump(mode="json")
        if teacher:
            raise ValueError("--teacher and --pretrain-params exclude each other: pre-training initialises the "
                             "teacher that an imported teacher replaces")
    op = ops(image)
    use_workspace = workspace_size.strip() not in ("", "0")
    config = None
    if use_workspace:
        patch = {"storageClassName": workspace_storage_class} if workspace_storage_class else None
        config = dsl.PipelineConfig(workspace=dsl.WorkspaceConfig(
            size=workspace_size.strip(), kubernetes=dsl.KubernetesWorkspaceConfig(pvcSpecPatch=patch)))
    nproc = cluster.gpus if cluster is not None and cluster.gpus > 1 else 1
    training = {"workspace": dsl.WORKSPACE_PATH_PLACEHOLDER if use_workspace else "", "nproc": nproc}

    @dsl.pipeline(name=PIPELINE_NAME, description="Distill-DBDGAN: data, teacher, student, registry, gate",
                  pipeline_config=config)
    def dbdgan_train(
        data_uri: str = "",
        data_digest: str = "",
        reports_uri: str = "",
        mlflow_tracking_uri: str = "",
        experiment: str = DEFAULT_EXPERIMENT,
        pretrain_experiment: str = f"{DEFAULT_EXPERIMENT}-pretrain",
        teacher_name: str = ModelNames.teacher,
        student_name: str = ModelNames.student,
    ) -> None:
        """Train, register and gate a defocus blur detector.

        data_uri: the raw dataset ("" for synthetic data, a folder, or s3://bucket/prefix); data_digest: its
        _SUCCESS.json digest for an s3:// dataset (`dbdgan pipeline submit` fills it in; it keys prepare's cache).
        reports_uri: s3://bucket/prefix for reports ("" = off). mlflow_tracking_uri: "" = the pod's
        MLFLOW_TRACKING_URI. experiment, teacher_name, student_name: where runs are tracked and under which
        names models register. The hyperparameters are fixed when the pipeline is compiled (--params, --set).
        """
        values = {"data_uri": data_uri, "data_digest": data_digest, "reports_uri": reports_uri,
                  "mlflow_tracking_uri": mlflow_tracking_uri, "experiment": experiment,
                  "teacher_name": teacher_name, "student_name": student_name,
                  "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        tasks: dict[str, Any] = {}
        init = None
        if pretrain_tree:
            pre_values = {**values, "data_uri": "", "data_digest": "", "experiment": pretrain_experiment}
            last = graph.INIT_STEPS[-1]
            tasks.update(add_steps(op, graph.steps_until(last), pre_values, pretrain_tree, prefix=PRETRAIN_PREFIX,
                                   training=training))
            init = {name: tasks[f"{PRETRAIN_PREFIX}{name}"].outputs[graph.step(name).output]
                    for name in graph.INIT_STEPS}
        chain, provided = graph.STEPS, {}
        if teacher:
            imported = op.import_teacher(source=teacher, mlflow_tracking_uri=mlflow_tracking_uri)
            # an alias such as @champion may move between runs: never a cached import
            imported.set_display_name("import teacher").set_caching_options(False)
            tasks["import_teacher"] = imported
            producer = graph.producer("teacher")
            chain = tuple(one for one in graph.STEPS if one is not producer)
            provided = {producer.output: imported.outputs[producer.output]}
        steps = add_steps(op, chain, values, tree, init, provided=provided, training=training, uncached=uncached)
        tasks.update(steps)
        with dsl.If(reports_uri != "", name="reports-enabled"):
            reports = {name: steps[graph.producer(name).name].outputs[name] for name in ("validation", "scores")}
            publish = op.publish_reports(reports_uri=reports_uri, run_id=values["run_id"], **reports)
            publish.set_display_name("publish reports").set_caching_options(False)
            tasks["publish_reports"] = publish
        register = steps[graph.producer("registered").name]
        with dsl.If(register.outputs["Output"] == PROMOTED, name="student-promoted"):
            champion = op.announce_champion(registered=register.outputs["registered"])
            champion.set_display_name("announce champion").set_caching_options(False)
            tasks["announce_champion"] = champion
        if cluster is not None:
            apply(tasks, cluster)
        else:
            for key, task in tasks.items():
                set_retries(task, step_of(key), local_retries, backoff="1s")

    return dbdgan_train
