"""The KFP pipeline compiles, wires every step, gates registration, and carries the cluster settings.

No Kubernetes or KFP API server can exist on the test machines, so `submit` is tested against a stand-in
for kfp.Client that records what it was asked to do; everything else runs the real KFP compiler.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp_fixtures import pipeline_tasks

from dbdgan import graph
from dbdgan.config import ConfigError
from dbdgan_kfp.components.factory import image
from dbdgan_kfp.pipelines import cli
from dbdgan_kfp.pipelines.k8s import ClusterSettings
from dbdgan_kfp.pipelines.pipeline import build_pipeline

REPO = Path(__file__).resolve().parents[1]
PARAMS_TEXT = (REPO / "params.yaml").read_text()
STEP_COMPONENTS = [f"comp-{one.command}" for one in graph.STEPS] + ["comp-publish-reports",
                                                                   "comp-announce-champion"]


def _compile(tmp_path: Path, cluster: ClusterSettings | None) -> tuple[dict, dict]:
    """Compile; return the pipeline spec and the Kubernetes platform config per executor (or {})."""
    from kfp import compiler

    out = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline(PARAMS_TEXT, cluster=cluster), str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    platform = docs[1]["platforms"]["kubernetes"].get("deploymentSpec", {}).get("executors", {}) \
        if len(docs) > 1 else {}
    return docs[0], platform


def _executor(spec: dict, component: str) -> dict:
    name = spec["components"][component]["executorLabel"]
    return spec["deploymentSpec"]["executors"][name]["container"]


def _task_params(tasks: dict[str, dict], name: str) -> dict:
    """The params a task was compiled with (its step's part of params.yaml)."""
    return yaml.safe_load(tasks[name]["inputs"]["parameters"]["params"]["runtimeValue"]["constant"])


def test_local_compile_wires_every_step_and_the_gate(tmp_path: Path) -> None:
    spec, platform = _compile(tmp_path, None)
    assert set(STEP_COMPONENTS) <= set(spec["components"])
    assert platform == {}  # no Kubernetes settings unless compiling for a cluster
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"data_uri", "data_digest", "reports_uri", "mlflow_tracking_uri",
                           "experiment", "pretrain_experiment", "teacher_name", "student_name"}
    assert params["student_name"]["defaultValue"] == "dbd-student"

    tasks = pipeline_tasks(spec)
    conditions = {name: task["triggerPolicy"]["condition"] for name, task in tasks.items()
                  if task.get("triggerPolicy", {}).get("condition")}
    assert len(conditions) == 2
    text = " ".join(conditions.values())
    assert "pipelinechannel--reports_uri'] != ''" in text  # reports are copied only when asked for
    # the one gate: the decision aliases.run_gate returned in the register step, nothing recomputed here
    assert "pipelinechannel--register-Output'] == 'promoted'" in text
    assert "register" in spec["root"]["dag"]["tasks"]  # every step runs; the gate decides what follows
    assert "announce-champion" not in spec["root"]["dag"]["tasks"]
    inner = next(comp for comp in spec["components"].values()
                 if "announce-champion" in comp.get("dag", {}).get("tasks", {}))
    assert inner["dag"]["tasks"]["announce-champion"]["componentRef"]["name"] == "comp-announce-champion"

    caching = {name: task.get("cachingOptions", {}).get("enableCache", False) for name, task in tasks.items()
               if not name.startswith("condition")}
    # the teacher is reused when only later steps' params change; registering is a side effect
    assert caching == {"prepare": True, "validate": True, "train-teacher": True, "distill-student": True,
                       "evaluate": True, "register": False, "publish-reports": False, "announce-champion": False}
    assert "validate" in tasks["train-teacher"]["dependentTasks"]  # no training on unvalidated data
    # a run id among the inputs would make every run a cache miss: only the uncached steps get it
    run_id_users = {name for name, task in tasks.items()
                    if "run_id" in task.get("inputs", {}).get("parameters", {})}
    assert run_id_users == {"register", "publish-reports"}
    # every artifact a step reads comes from the step the table says produces it
    for one in graph.STEPS:
        for name in one.inputs:
            source = tasks[one.command]["inputs"]["artifacts"][name]["taskOutputArtifact"]
            assert source == {"outputArtifactKey": name, "producerTask": graph.producer(name).command}


def test_components_run_the_project_image_without_pip(tmp_path: Path) -> None:
    spec, _ = _compile(tmp_path, None)
    for component in STEP_COMPONENTS:
        container = _executor(spec, component)
        assert container["image"] == image() and not container["image"].endswith(":latest")  # make image's tag
        assert "pip install" not in " ".join(container["command"])  # the image already holds everything


def test_cluster_compile_carries_kubernetes_settings(tmp_path: Path) -> None:
    spec, platform = _compile(tmp_path, ClusterSettings(gpus=1))
    for step in ("comp-train-teacher", "comp-distill-student"):
        resources = _executor(spec, step)["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
        config = platform[spec["components"][step]["executorLabel"]]
        assert config["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        assert config["tolerations"] == [toleration]
        assert {m["mountPath"] for m in config["emptyDirMounts"]} == {"/dev/shm"}
    for step in STEP_COMPONENTS:
        resources = _executor(spec, step)["resources"]
        assert resources.get("cpuRequest") and resources.get("memoryRequest")
        config = platform[spec["components"][step]["executorLabel"]]
        secrets = {s["secretName"]: {m["secretKey"]: m["envVar"] for m in s["keyToEnv"]}
                   for s in config["secretAsEnv"]}
        if step in ("comp-prepare", "comp-validate", "comp-register", "comp-publish-reports",
                    "comp-import-teacher"):  # S3 steps only
            assert secrets["dbdgan-s3"] == {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
        else:
            assert "dbdgan-s3" not in secrets
        config_maps = {c["configMapName"]: [m["envVar"] for m in c["keyToEnv"]]
                       for c in config["configMapAsEnv"]}
        assert "MLFLOW_TRACKING_URI" in config_maps["dbdgan-config"]
        if step not in ("comp-train-teacher", "comp-distill-student"):
            assert "accelerator" not in _executor(spec, step)["resources"]
    retries = {name: task.get("retryPolicy", {}).get("maxRetryCount")
               for name, task in pipeline_tasks(spec).items() if not name.startswith("condition")}
    assert retries.pop("register") is None  # registering is not idempotent
    assert set(retries.values()) == {2}


def test_cluster_settings_are_configurable(tmp_path: Path) -> None:
    settings = ClusterSettings(s3_secret=None, mlflow_secret=None, config_map=None, gpus=2,
                               accelerator_type="amd.com/gpu", gpu_node_selector={"pool": "gpu"})
    spec, platform = _compile(tmp_path, settings)
    resources = _executor(spec, "comp-train-teacher")["resources"]
    assert resources["accelerator"]["resourceType"] == "amd.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "2"
    config = platform[spec["components"]["comp-train-teacher"]["executorLabel"]]
    assert config["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert "secretAsEnv" not in config


def test_invalid_params_fail_at_compile_time() -> None:
    with pytest.raises(ConfigError, match="train_teacher.epochs"):
        build_pipeline("train_teacher:\n  epochs: 0\n")


def test_cli_compile_keeps_secrets_out_of_the_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    planted = {"AWS_SECRET_ACCESS_KEY": "PLANTEDSECRETaws0123456789", "AWS_ACCESS_KEY_ID": "AKIAPLANTED0123",
               "MLFLOW_TRACKING_PASSWORD": "PLANTEDSECRETmlflow42", "KFP_TOKEN": "PLANTEDSECRETtoken99"}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "pipeline.yaml"
    assert cli.main(["compile", "--params", str(REPO / "params.yaml"), "--out", str(out)]) == 0
    text = out.read_text() + capsys.readouterr().out
    assert "secretAsEnv" in text  # the secret is referenced by name ...
    for value in planted.values():
        assert value not in text  # ... never by value


def test_cli_compile_local_and_image(tmp_path: Path) -> None:
    out = tmp_path / "local.yaml"
    assert cli.main(["compile", "--params", str(REPO / "params.yaml"), "--out", str(out), "--local",
                     "--image", "registry.example/dbdgan:1.2"]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    # no per-task Kubernetes settings; only the run's workspace, which kfp.local provides too
    assert docs[1]["platforms"]["kubernetes"] == {"pipelineConfig": {"workspace": {
        "kubernetes": {"pvcSpecPatch": {}}, "size": "20Gi"}}}
    assert _executor(docs[0], "comp-train-teacher")["image"] == "registry.example/dbdgan:1.2"


def test_cli_compile_overlays_a_profile(tmp_path: Path) -> None:
    """A GPU profile with a real data source compiles: its folder comes from data_uri at run time, and
    nothing but the prepare step needs it."""
    out = tmp_path / "gpu.yaml"
    assert cli.main(["compile", "--params", str(REPO / "params.yaml"), "--params",
                     str(REPO / "profiles" / "paper-gpu.yaml"), "--out", str(out)]) == 0
    tasks = pipeline_tasks(next(yaml.safe_load_all(out.read_text())))
    teacher = _task_params(tasks, "train-teacher")
    data = _task_params(tasks, "prepare")["data"]
    assert teacher["model"]["teacher"] == "teacher_paper" and data["source"] == "cuhk"
    assert "input" not in data  # params hold no paths


def test_cli_compile_with_synthetic_pretraining_wires_init_models(tmp_path: Path) -> None:
    """--pretrain-params adds pre-training on synthetic data whose models initialise the real trainings."""
    out = tmp_path / "pretrain.yaml"
    profile = ["--params", str(REPO / "params.yaml"), "--params", str(REPO / "profiles" / "cuhk-cpu-scratch.yaml")]
    pretrain = ["--pretrain-params", str(REPO / "params.yaml"),
                "--pretrain-params", str(REPO / "profiles" / "synthetic-pretrain.yaml")]
    assert cli.main(["compile", *profile, *pretrain, "--out", str(out), "--gpus", "1"]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    spec, platform = docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks = pipeline_tasks(spec)
    # Task names follow creation order: the pre-training tasks come first (train-teacher), the real ones
    # second (train-teacher-2); their display names tell them apart in the UI.
    producer = {name: tasks[name]["inputs"]["artifacts"]["init"]["taskOutputArtifact"]
                for name in ("train-teacher-2", "distill-student-2")}
    assert producer == {"train-teacher-2": {"outputArtifactKey": "teacher", "producerTask": "train-teacher"},
                        "distill-student-2": {"outputArtifactKey": "student", "producerTask": "distill-student"}}
    assert tasks["train-teacher"]["taskInfo"]["name"] == "pretrain train teacher"
    assert tasks["train-teacher-2"]["taskInfo"]["name"] == "train teacher"
    pre_data = tasks["train-teacher"]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]["producerTask"]
    assert _task_params(tasks, pre_data)["data"]["source"] == "synthetic"
    assert _task_params(tasks, "train-teacher")["model"]["teacher"] == "teacher_small"
    real_data = tasks["train-teacher-2"]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]["producerTask"]
    assert real_data != pre_data and "validate-2" in tasks["train-teacher-2"]["dependentTasks"]
    evaluated = tasks["evaluate"]["inputs"]["artifacts"]["student"]["taskOutputArtifact"]
    assert evaluated["producerTask"] == "distill-student-2"  # the fine-tuned student goes on, not the pre-trained
    for name in ("train-teacher", "distill-student"):
        # its own checkpoint folder in the run's workspace, apart from the real training's
        task_key = tasks[name]["inputs"]["parameters"]["task"]["runtimeValue"]["constant"]
        assert task_key == f"pretrain_{name.replace('-', '_')}"
        assert "init" not in tasks[name]["inputs"].get("artifacts", {})
        executor = spec["components"][tasks[name]["componentRef"]["name"]]["executorLabel"]
        assert spec["deploymentSpec"]["executors"][executor]["container"]["resources"]["accelerator"]
        assert platform[executor]["tolerations"]  # pre-training gets the GPU settings of its step
    assert "init" in spec["components"]["comp-train-teacher"]["inputDefinitions"]["artifacts"]


def test_pretraining_must_train_the_same_networks() -> None:
    with pytest.raises(ValueError, match="model.teacher is 'teacher_small' but the real run's is 'teacher_tiny'"):
        build_pipeline(PARAMS_TEXT, pretrain_text="model:\n  teacher: teacher_small\n")
    with pytest.raises(ValueError, match="data.source must be 'synthetic'"):
        build_pipeline(PARAMS_TEXT, pretrain_text="data:\n  source: cuhk\n")


def test_cli_reports_a_missing_params_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["compile", "--params", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "p.yaml")]
    assert cli.main(args) == 1
    assert "params file not found" in capsys.readouterr().err


class FakeClient:
    """Stands in for kfp.Client: no KFP API server can run here."""

    instances: list[FakeClient] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.runs: list[dict[str, Any]] = []
        FakeClient.instances.append(self)

    def create_run_from_pipeline_package(self, pipeline_file: str, **kwargs: Any) -> Any:
        docs = list(yaml.safe_load_all(Path(pipeline_file).read_text()))
        self.runs.append({"package": docs, **kwargs})
        return type("Run", (), {"run_id": "run-123"})()


def test_submit_compiles_for_the_cluster_and_prints_the_run_url(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import kfp

    FakeClient.instances = []
    monkeypatch.setattr(kfp, "Client", FakeClient)
    monkeypatch.setenv("KFP_TOKEN", "PLANTEDSECRETtoken77")
    code = cli.main(["submit", "--host", "https://kfp.example.com/pipeline/", "--namespace", "team-a",
                     "--experiment", "nightly", "--run-name", "r1", "--params", str(REPO / "params.yaml"),
                     "--set", "train_teacher.epochs=2", "--data-uri", "s3://data/cuhk", "--student-name", "s-x",
                     "--no-cache"])
    assert code == 0
    [client] = FakeClient.instances
    assert client.kwargs == {"host": "https://kfp.example.com/pipeline/",
                             "existing_token": "PLANTEDSECRETtoken77", "namespace": "team-a"}
    [run] = client.runs
    assert run["experiment_name"] == "nightly" and run["run_name"] == "r1" and run["namespace"] == "team-a"
    assert run["enable_caching"] is False
    assert _task_params(pipeline_tasks(run["package"][0]), "train-teacher")["train_teacher"]["epochs"] == 2
    assert run["arguments"]["data_uri"] == "s3://data/cuhk"
    assert run["arguments"]["student_name"] == "s-x"
    assert "teacher_name" not in run["arguments"]  # unset flags keep the pipeline defaults
    assert len(run["package"]) == 2  # compiled with the Kubernetes platform settings
    out = capsys.readouterr().out
    assert "https://kfp.example.com/pipeline/#/runs/details/run-123" in out
    assert "PLANTEDSECRET" not in out + str(run["package"]) + str(run["arguments"])


def test_submit_needs_a_host(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KFP_HOST", raising=False)
    assert cli.main(["submit", "--params", str(REPO / "params.yaml")]) == 1
    assert "no KFP endpoint" in capsys.readouterr().err


def test_submit_to_an_unreachable_host_fails_clearly(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The real kfp.Client against a closed local port: a clear error, and the token is not in it."""
    from kfp_fixtures import free_port

    monkeypatch.setenv("KFP_TOKEN", "PLANTEDSECRETtoken55")
    host = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["submit", "--host", host, "--params", str(REPO / "params.yaml")]) == 1
    captured = capsys.readouterr()
    assert f"cannot submit to KFP at {host}" in captured.err
    assert "PLANTEDSECRET" not in captured.out + captured.err


def test_library_never_imports_kfp() -> None:
    code = ("import sys, dbdgan.steps, dbdgan.storage, dbdgan.cli, dbdgan_kfp.components._runtime\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kfp', 'dvc'))\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def _shout(text: str) -> str:
    print("a line of the task's own log", text)
    return text.upper()


def _boom(text: str) -> None:
    print("about to fail")
    raise ValueError(f"planted failure for {text}")


def test_run_local_prints_a_line_per_task_and_the_failed_tasks_last_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real kfp.local run (two tiny lightweight components) through run-local's quiet output: each task one
    line (its return value beside it), a skipped one said so, retries said so; a failure adds the failed task's
    last lines to stderr, without the executor's input JSON; -v (the flag) would stream everything."""
    import re

    from kfp import dsl, local

    from dbdgan_kfp.pipelines.cli import _task_lines

    # this module's annotations are strings (__future__), which KFP does not read: the real types
    _shout.__annotations__, _boom.__annotations__ = {"text": str, "return": str}, {"text": str, "return": None}
    shout = dsl.component(_shout, base_image="python:3.11", install_kfp_package=False)
    boom = dsl.component(_boom, base_image="python:3.11", install_kfp_package=False)

    def tiny_graph(fail: bool = False) -> None:
        first = shout(text="x")
        with dsl.If(first.output == "never", name="never-shouted"):
            shout(text="skipped")
        with dsl.If(fail == True, name="asked-to-fail"):  # noqa: E712 - a KFP condition, not a comparison
            boom(text=first.output).set_retry(num_retries=1, backoff_duration="0s")

    tiny_graph.__annotations__ = {"fail": bool, "return": None}
    tiny = dsl.pipeline(name="tiny")(tiny_graph)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path), raise_on_error=True)
    with _task_lines(verbose=False, pipeline=tiny) as lines:
        tiny()
    out = capsys.readouterr().out.splitlines()
    said = sorted(re.sub(r"in \d+ s", "in N s", line) for line in out)  # the conditions may come first
    assert said == ["  asked-to-fail: skipped (its condition is false)",  # a condition by its name
                   "  never-shouted: skipped (its condition is false)", "  shout: SUCCESS in N s -> X"]
    assert lines is not None and lines.finished == [("shout", "SUCCESS")]

    with pytest.raises(RuntimeError, match="Inner task failed"), _task_lines(verbose=False, pipeline=tiny):
        tiny(fail=True)
    captured = capsys.readouterr()
    said = [re.sub(r"in \d+ s", "in N s", line) for line in captured.out.splitlines()]
    assert said[0] == "  shout: SUCCESS in N s -> X" and len(said) == 5  # the conditions in either order
    assert "  never-shouted: skipped (its condition is false)" in said
    assert [line for line in said if "boom" in line] == ["  boom: FAILURE in N s", "  boom: attempt 1 of 2 failed, "
                                                         "retrying", "  boom: FAILURE in N s"]
    assert "a line of the task's own log" not in captured.out + captured.err  # only in -v's stream
    err = captured.err.splitlines()
    assert err[0] == "dbdgan pipeline run-local: task boom failed; its last lines (all of them with -v):"
    assert any(line.strip() == "about to fail" for line in err)
    assert any(line.strip() == "ValueError: planted failure for X" for line in err)
    assert "executor_input" not in captured.err and "parameterValues" not in captured.err
    assert cli.build_parser().parse_args(["run-local", "-v"]).verbose
