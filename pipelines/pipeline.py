"""The dbdgan KFP pipeline: prepare, validate, train_teacher, distill_student, evaluate, [gate] register.

Optionally (compile-time) preceded by synthetic pre-training, whose models initialise the two trainings.

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

from components.ops import ops
from dbdgan.config import Params, params_from_dict
from pipelines.k8s import PRETRAIN_PREFIX, ClusterSettings, apply, step_of

PIPELINE_NAME = "dbdgan-train"
STUDENT_MAE_METRIC = "student.mae"
# Stands in for data.input while validating at compile time: a real source gets its folder from data_uri.
RUNTIME_INPUT = "<data_uri at run time>"


def check_params(tree: dict[str, Any], source: str = "params_yaml") -> Params:
    """Validate params as the prepare step will see them (data.input may come from data_uri at run time)."""
    probe = [] if (tree.get("data") or {}).get("input") else [f"data.input={json.dumps(RUNTIME_INPUT)}"]
    return params_from_dict(copy.deepcopy(tree), probe, source=source)  # it sets overrides in nested dicts


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


def build_pipeline(params_text: str = "", cluster: ClusterSettings | None = None,
                   image: str | None = None, pretrain_text: str = "") -> GraphComponent:
    """The pipeline with `params_text` (params.yaml content) as the default of its params_yaml parameter.

    The text is validated here, so a broken params.yaml fails at compile time, not in a pod. The default is
    stored as one line of JSON (valid YAML): the KFP compiler copies defaults into a comment header of the
    IR file, and a multi-line default would break that file.

    pretrain_text (optional): params of a synthetic pre-training (e.g. params.yaml overlaid by
    profiles/synthetic-pretrain.yaml). Then the graph first prepares synthetic data and trains teacher and
    student on it, and the real teacher and student start from those weights. These params are fixed at
    compile time; the pre-trained models are not registered.
    """
    tree: Any = (yaml.safe_load(params_text) if params_text.strip() else None) or {}
    params = check_params(tree)
    defaults = params.register
    params_default = json.dumps(tree, separators=(",", ":"))
    pretrain_tree: Any = (yaml.safe_load(pretrain_text) if pretrain_text.strip() else None) or {}
    pretrain = check_pretrain(pretrain_tree, params) if pretrain_tree else None
    op = ops(image)

    @dsl.pipeline(name=PIPELINE_NAME, description="Distill-DBDGAN: data, teacher, student, gate, registry")
    def dbdgan_train(
        params_yaml: str = params_default,
        overrides: list = [],  # noqa: B006 -- KFP reads the default; it is never mutated
        data_uri: str = "",
        reports_uri: str = "",
        mlflow_tracking_uri: str = "",
        experiment: str = defaults.experiment,
        teacher_name: str = defaults.teacher_name,
        student_name: str = defaults.student_name,
        min_student_max_f: float = 0.0,
        max_student_mae: float = 1.0,
    ) -> None:
        """Train and register a defocus blur detector.

        params_yaml/overrides: params.yaml text and `dotted.key=value` overrides. data_uri: "" (params),
        a folder, or s3://bucket/prefix of raw data. reports_uri: s3://bucket/prefix for reports ("" = off).
        mlflow_tracking_uri: "" = the pod's MLFLOW_TRACKING_URI. The student is registered only if its
        max-F >= min_student_max_f and its MAE <= max_student_mae.
        """
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        common = {"params_yaml": params_yaml, "overrides": overrides}
        prepare = op.prepare_data(**common, data_uri=data_uri).set_display_name("prepare data")
        validate = op.validate_data(**common, reports_uri=reports_uri,
                                    dataset=prepare.outputs["dataset"]).set_display_name("validate data")
        tracking = {"mlflow_tracking_uri": mlflow_tracking_uri, "experiment": experiment}
        tasks: dict[str, Any] = {}
        init: dict[str, dict[str, Any]] = {"teacher": {}, "student": {}}
        if pretrain is not None:
            pre = {"params_yaml": json.dumps(pretrain_tree, separators=(",", ":")), "overrides": []}
            pre_tracking = {"mlflow_tracking_uri": mlflow_tracking_uri,
                            "experiment": pretrain.register.experiment}
            pre_data = op.prepare_data(**pre, data_uri="").set_display_name("prepare synthetic data")
            pre_teacher = op.train_teacher(**pre, **pre_tracking, dataset=pre_data.outputs["dataset"])
            pre_teacher.set_display_name("pre-train teacher (synthetic)")
            pre_student = op.distill_student(**pre, **pre_tracking, dataset=pre_data.outputs["dataset"],
                                             teacher=pre_teacher.outputs["teacher"])
            pre_student.set_display_name("pre-train student (synthetic)")
            tasks.update({f"{PRETRAIN_PREFIX}prepare_data": pre_data,
                          f"{PRETRAIN_PREFIX}train_teacher": pre_teacher,
                          f"{PRETRAIN_PREFIX}distill_student": pre_student})
            init = {"teacher": {"init": pre_teacher.outputs["teacher"]},
                    "student": {"init": pre_student.outputs["student"]}}
        teacher = op.train_teacher(**common, **tracking, **init["teacher"],
                                   dataset=prepare.outputs["dataset"]).set_display_name("train teacher")
        teacher.after(validate)
        student = op.distill_student(**common, **tracking, **init["student"],
                                     dataset=prepare.outputs["dataset"],
                                     teacher=teacher.outputs["teacher"]).set_display_name("distill student")
        evaluate = op.evaluate_models(**common, mlflow_tracking_uri=mlflow_tracking_uri,
                                      dataset=prepare.outputs["dataset"],
                                      teacher=teacher.outputs["teacher"],
                                      student=student.outputs["student"]).set_display_name("evaluate")
        mae = op.metric_value(metrics=evaluate.outputs["metrics"], name=STUDENT_MAE_METRIC)
        mae.set_display_name("student MAE")
        tasks.update({"prepare_data": prepare, "validate_data": validate, "train_teacher": teacher,
                      "distill_student": student, "evaluate_models": evaluate, "metric_value": mae})
        for name, task in tasks.items():
            task.set_caching_options(step_of(name) not in ("train_teacher", "distill_student"))
        with dsl.If(reports_uri != "", name="reports-enabled"):
            publish = op.publish_reports(reports_uri=reports_uri, run_id=run_id,
                                         validation=validate.outputs["report"],
                                         scores=evaluate.outputs["scores"])
            publish.set_display_name("publish reports").set_caching_options(False)
            tasks["publish_reports"] = publish
        # The promotion gate: nested conditions (KFP has no `and`), each on a task's single return value.
        with (dsl.If(evaluate.outputs["Output"] >= min_student_max_f, name="student-max-f-gate"),
              dsl.If(mae.output <= max_student_mae, name="student-mae-gate")):
            register = op.register_models(
                **common, **tracking, teacher_name=teacher_name, student_name=student_name, run_id=run_id,
                reports_uri=reports_uri,
                dataset=prepare.outputs["dataset"], teacher=teacher.outputs["teacher"],
                student=student.outputs["student"], scores=evaluate.outputs["scores"],
            ).set_display_name("register models")
            register.set_caching_options(False)
            tasks["register_models"] = register
        if cluster is not None:
            apply(tasks, cluster)

    return dbdgan_train
