"""The Kubernetes serving manifests (deploy/): valid objects that serve the champion with the pipeline's settings.

Each object goes through the Kubernetes API models (`kubernetes` client) and back: a misspelt or misplaced field
would be dropped on the way and show up as a difference. The Secrets, ConfigMap, user and model name are the
ones the pipeline uses (pipelines/k8s.py, dbdgan.tracking); the container itself runs under podman in
tests/test_image_serve.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dbdgan.tracking import ModelNames
from dbdgan_kfp.pipelines.k8s import ClusterSettings

REPO = Path(__file__).resolve().parents[1]
KSERVE = REPO / "deploy/kserve/inferenceservice.yaml"
PLAIN = REPO / "deploy/k8s/deployment.yaml"


def _objects(path: Path) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def _round_trip(tree: dict[str, Any], kind: str) -> dict[str, Any]:
    """`tree` as the Kubernetes API model `kind` reads it and writes it back."""
    client = pytest.importorskip("kubernetes.client")
    api = client.ApiClient()
    return api.sanitize_for_serialization(api._ApiClient__deserialize(tree, kind))


def serving_container(path: Path = PLAIN) -> dict[str, Any]:
    """The container that serves the champion (the Deployment's; the InferenceService's is the same)."""
    return _objects(path)["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_the_manifests_are_valid_kubernetes_objects() -> None:
    plain = _objects(PLAIN)
    assert set(plain) == {"Deployment", "Service"}
    assert _round_trip(plain["Deployment"], "V1Deployment") == plain["Deployment"]
    assert _round_trip(plain["Service"], "V1Service") == plain["Service"]

    isvc = _objects(KSERVE)["InferenceService"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = dict(isvc["spec"]["predictor"])
    replicas = {key: predictor.pop(key) for key in ("minReplicas", "maxReplicas")}  # KServe's own fields
    assert 1 <= replicas["minReplicas"] <= replicas["maxReplicas"]
    assert _round_trip(predictor, "V1PodSpec") == predictor  # the rest of a predictor is a pod spec


def test_both_ways_run_the_same_container_on_the_champion() -> None:
    container = serving_container()
    kserve = _objects(KSERVE)["InferenceService"]["spec"]["predictor"]["containers"][0]
    assert kserve["name"] == "kserve-container"  # the name KServe routes to
    same = ("image", "command", "args", "env", "readinessProbe", "livenessProbe", "resources", "securityContext",
            "volumeMounts")
    assert {key: container[key] for key in same} == {key: kserve[key] for key in same}
    assert container["image"].startswith("registry.example.com/ml/dbdgan:")
    assert not container["image"].endswith(":latest")  # tags name a version (docs/kubernetes.md)

    args = container["args"]
    assert container["command"] == ["mlflow", "models", "serve"] and "--env-manager" in args
    assert args[args.index("-m") + 1] == f"models:/{ModelNames().student}@champion"
    port = int(args[args.index("-p") + 1])
    assert [p["containerPort"] for p in container["ports"]] == [port] == [p["containerPort"] for p in kserve["ports"]]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ping", "port": port}
    service = _objects(PLAIN)["Service"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    labels = _objects(PLAIN)["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == labels


def test_the_pipelines_secrets_config_map_and_user() -> None:
    settings = ClusterSettings()
    expected = {}
    for source, name, keys in (("secretKeyRef", settings.s3_secret, settings.s3_secret_keys),
                               ("secretKeyRef", settings.mlflow_secret, settings.mlflow_secret_keys),
                               ("configMapKeyRef", settings.config_map, settings.config_map_keys)):
        for env_name, key in keys.items():
            expected[env_name] = {source: {"name": name, "key": key, "optional": True}}
    for path in (PLAIN, KSERVE):
        objects = _objects(path)
        pod = (objects["Deployment"]["spec"]["template"]["spec"] if path == PLAIN
               else objects["InferenceService"]["spec"]["predictor"])
        container = pod["containers"][0]
        referenced = {item["name"]: item["valueFrom"] for item in container["env"] if "valueFrom" in item}
        assert referenced == expected, path
        plain_values = {item["name"]: item["value"] for item in container["env"] if "value" in item}
        assert not any(marker in name for name in plain_values for marker in ("SECRET", "PASSWORD", "KEY"))
        assert pod["securityContext"] == {"runAsUser": settings.run_as_user, "runAsGroup": settings.run_as_user,
                                          "runAsNonRoot": True}
        # the image's root is read-only: its scratch dir /tmp (label io.dbdgan.scratch) is an emptyDir
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == {"tmp": "/tmp"} and [v["name"] for v in pod["volumes"] if "emptyDir" in v] == ["tmp"]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"]  # Guaranteed QoS, as the pipeline's steps
        threads = plain_values["OMP_NUM_THREADS"]
        assert threads == resources["limits"]["cpu"]  # one thread per core the pod may use
    assert '"/tmp ' in (REPO / "Dockerfile").read_text()
