"""Cluster-safe defaults of the compiled pipeline and the components, without podman or a cluster.

No Kubernetes cluster can exist here: these tests read what the real KFP compiler writes for one (images,
resources, Secrets, env) and call a real component function the way the KFP executor would.
"""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kfp_fixtures import component_params

from dbdgan_kfp.components import _runtime as rt
from dbdgan_kfp.components import factory
from dbdgan_kfp.components.train_teacher import train_teacher
from dbdgan_kfp.pipelines import cli
from dbdgan_kfp.pipelines.k8s import DEFAULT_RESOURCES, S3_STEPS

REPO = Path(__file__).resolve().parents[1]


def _compile(tmp_path: Path, *flags: str) -> tuple[dict, dict]:
    """`dbdgan pipeline compile` with flags: executors by step name, and their Kubernetes config (or {})."""
    out = tmp_path / "pipeline.yaml"
    assert cli.main(["compile", "--params", str(REPO / "params.yaml"), "--out", str(out), *flags]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    step = {name: name.removeprefix("exec-").replace("-", "_") for name in docs[0]["deploymentSpec"]["executors"]}
    containers = {step[name]: ex["container"] for name, ex in docs[0]["deploymentSpec"]["executors"].items()}
    platform = docs[1]["platforms"]["kubernetes"].get("deploymentSpec", {}).get("executors", {})
    return containers, {step[name]: config for name, config in platform.items()}


@pytest.fixture(autouse=True)
def _no_image_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(factory.IMAGE_ENV, raising=False)
    monkeypatch.delenv(factory.REPO_ENV, raising=False)


def test_compile_names_the_tag_make_image_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    tag = factory.build_tag()
    assert re.fullmatch(rf"localhost/dbdgan:{re.escape(version('dbdgan'))}-g{commit}(-dirty)?", tag)
    # `make image` tags with this command's output (scripts/build-image.sh); compile names the same
    printed = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "dbdgan_kfp.pipelines.cli", "image-tag"],
                             capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert printed == tag
    containers, _ = _compile(tmp_path, "--local")
    assert {c["image"] for c in containers.values()} == {tag}

    monkeypatch.setenv(factory.REPO_ENV, "registry.example.com/ml/dbdgan")
    containers, _ = _compile(tmp_path, "--local")
    pushed = tag.replace("localhost/dbdgan", "registry.example.com/ml/dbdgan")
    assert {c["image"] for c in containers.values()} == {pushed}
    digest = "registry.example.com/ml/dbdgan@sha256:" + "0" * 64
    containers, _ = _compile(tmp_path, "--local", "--image", digest)
    assert {c["image"] for c in containers.values()} == {digest}


def test_image_tag_outside_a_checkout_says_what_to_pass(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(factory, "CHECKOUT", tmp_path)  # an installed copy: no .git beside it
    with pytest.raises(RuntimeError, match="not a git checkout; pass --image or set \\$DBDGAN_IMAGE"):
        factory.image()
    monkeypatch.setenv(factory.IMAGE_ENV, "registry.example.com/ml/dbdgan:0.1.0-gabc")  # as inside the image
    assert factory.image() == "registry.example.com/ml/dbdgan:0.1.0-gabc"


def test_every_step_has_cpu_and_memory_requests_and_limits(tmp_path: Path) -> None:
    containers, _ = _compile(tmp_path, "--teacher", "models:/dbd-teacher/1")
    assert set(containers) == set(DEFAULT_RESOURCES) - {"train_teacher"}
    containers.update(_compile(tmp_path)[0])
    for step, wanted in DEFAULT_RESOURCES.items():
        res = containers[step]["resources"]
        assert (res["resourceCpuRequest"], res["resourceMemoryRequest"]) == (wanted.cpu, wanted.memory)
        assert (res["resourceCpuLimit"], res["resourceMemoryLimit"]) == (wanted.cpu, wanted.memory), step
        assert "accelerator" not in res  # GPUs only when asked

    containers, _ = _compile(tmp_path, "--cpu", "train_teacher=4,8", "--memory", "train_teacher=16Gi,24Gi",
                             "--memory", "evaluate=6Gi", "--gpus", "2")
    teacher = containers["train_teacher"]["resources"]
    assert (teacher["resourceCpuRequest"], teacher["resourceCpuLimit"]) == ("4", "8")
    assert (teacher["resourceMemoryRequest"], teacher["resourceMemoryLimit"]) == ("16Gi", "24Gi")
    evaluate = containers["evaluate"]["resources"]
    assert (evaluate["resourceMemoryRequest"], evaluate["resourceMemoryLimit"]) == ("6Gi", "6Gi")
    gpus = {step for step, c in containers.items() if "accelerator" in c["resources"]}
    assert gpus == {"train_teacher", "distill_student"}
    assert teacher["accelerator"]["resourceCount"] == "2"


def test_resource_flags_name_a_bad_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["compile", "--params", str(REPO / "params.yaml"), "--out", str(tmp_path / "p.yaml")]
    assert cli.main([*args, "--cpu", "train=4"]) == 1
    assert "--cpu train=4: unknown step 'train'; steps: prepare, validate" in capsys.readouterr().err
    assert cli.main([*args, "--s3-steps", "prepare,training"]) == 1
    assert "--s3-steps: unknown step training; steps: prepare" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_s3_secret_only_on_the_steps_that_touch_s3(tmp_path: Path) -> None:
    def secrets(platform: dict) -> dict[str, set[str]]:
        return {step: {s["secretName"] for s in config.get("secretAsEnv", [])} for step, config in platform.items()}

    _, platform = _compile(tmp_path, "--teacher", "s3://models/teacher.pt")
    with_s3 = {step for step, names in secrets(platform).items() if "dbdgan-s3" in names}
    assert with_s3 == set(S3_STEPS) == {"prepare", "validate", "register", "publish_reports", "import_teacher"}
    for step in with_s3:  # optional: a synthetic-data run needs no S3 Secret in the namespace at all
        [s3] = [s for s in platform[step]["secretAsEnv"] if s["secretName"] == "dbdgan-s3"]
        assert s3["optional"] is True
    assert all("dbdgan-mlflow" in names for names in secrets(platform).values())

    _, platform = _compile(tmp_path, "--s3-steps", "prepare,train_teacher")
    assert {step for step, names in secrets(platform).items() if "dbdgan-s3" in names} == {"prepare",
                                                                                             "train_teacher"}
    _, platform = _compile(tmp_path, "--s3-secret", "")
    assert not any("dbdgan-s3" in names for names in secrets(platform).values())


def test_cluster_steps_know_their_config_map_and_run_as_the_image_user(tmp_path: Path) -> None:
    containers, platform = _compile(tmp_path, "--config-map", "team-tracking")
    for step in ("train_teacher", "register"):
        env = {item["name"]: item["value"] for item in containers[step]["env"]}
        assert env[rt.CONFIG_MAP_ENV] == "team-tracking"
    for config in platform.values():  # the Dockerfile's UID, so runAsNonRoot admission accepts the pods
        assert config["securityContext"] == {"runAsUser": "10001", "runAsGroup": "10001", "runAsNonRoot": True}


def _call_train_teacher(tmp_path: Path, mlflow_tracking_uri: str) -> None:
    """The component's function as the KFP executor calls it (artifacts are objects with a path)."""
    artifact = lambda name: SimpleNamespace(path=str(tmp_path / name), metadata={})  # noqa: E731
    train_teacher.python_func(params=component_params(),
                              mlflow_tracking_uri=mlflow_tracking_uri, experiment="dbdgan",
                              dataset=artifact("dataset"), teacher=artifact("teacher"),
                              metrics=artifact("metrics"))


def test_a_component_without_tracking_fails_instead_of_using_sqlite(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(rt.CONFIG_MAP_ENV, "team-tracking")
    with pytest.raises(rt.TrackingNotConfigured) as error:
        _call_train_teacher(tmp_path, "")
    message = str(error.value)
    assert "MLFLOW_TRACKING_URI" in message and "'team-tracking'" in message
    assert "mlflow_tracking_uri" in message and "docs/kubernetes.md" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no sqlite store, no outputs, nothing
    monkeypatch.delenv(rt.CONFIG_MAP_ENV)
    with pytest.raises(rt.TrackingNotConfigured, match="'dbdgan-config'"):
        _call_train_teacher(tmp_path, "  ")


def test_component_tracking_comes_from_the_parameter_or_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.mlflow.svc:5000")
    assert rt.tracking("", "exp").uri == "http://mlflow.mlflow.svc:5000"
    assert rt.tracking("http://other:5000", "exp").uri == "http://other:5000"


def _retries(spec: dict) -> dict[str, int | None]:
    from kfp_fixtures import pipeline_tasks

    return {name.replace("-", "_"): task.get("retryPolicy", {}).get("maxRetryCount")
            for name, task in pipeline_tasks(spec).items() if not name.startswith("condition")}


def test_what_each_task_gets_is_its_steps_row(tmp_path: Path) -> None:
    """Resources, deadline, GPUs, the S3 Secret and retries of every step's task are its row's `pod`
    (dbdgan.graph.STEPS); the plumbing tasks' are k8s.PLUMBING's."""
    from dbdgan.graph import STEPS
    from dbdgan_kfp.pipelines import k8s

    containers, platform = _compile(tmp_path, "--gpus", "1")
    spec = next(yaml.safe_load_all((tmp_path / "pipeline.yaml").read_text()))
    retries = _retries(spec)
    pods = {**{one.name: one.pod for one in STEPS}, **k8s.PLUMBING}
    for name, container in containers.items():
        pod = pods[name]
        resources = container["resources"]
        assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"]) == (pod.resources.cpu,
                                                                                       pod.resources.memory)
        assert ("accelerator" in resources) == pod.gpu, name
        assert platform[name]["activeDeadlineSeconds"] == str(pod.timeout_s), name
        secrets = {s["secretName"] for s in platform[name].get("secretAsEnv", [])}
        assert ("dbdgan-s3" in secrets) == pod.s3, name
        if name in retries:
            assert (retries[name] is not None) == pod.retry, name


def test_a_step_declared_gpu_or_unretried_is_what_the_cluster_compile_applies(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from kfp import compiler

    from dbdgan_kfp.pipelines import k8s
    from dbdgan_kfp.pipelines.pipeline import build_pipeline

    monkeypatch.setitem(k8s.PODS, "evaluate", replace(k8s.PODS["evaluate"], gpu=True, retry=False))
    out = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline((REPO / "params.yaml").read_text(), image="r/d:1",
                                               cluster=k8s.ClusterSettings(gpus=1)), str(out))
    spec = next(yaml.safe_load_all(out.read_text()))
    executor = spec["components"]["comp-evaluate"]["executorLabel"]
    accelerator = spec["deploymentSpec"]["executors"][executor]["container"]["resources"]["accelerator"]
    assert (accelerator["resourceCount"], accelerator["resourceType"]) == ("1", "nvidia.com/gpu")
    retries = _retries(spec)
    assert retries["evaluate"] is None and retries["validate"] == 2
    with pytest.raises(KeyError, match="no step or pipeline task 'nope'"):
        k8s.pod("pretrain_nope")
