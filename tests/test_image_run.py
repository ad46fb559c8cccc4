"""The built image runs every step's component (`make image-test`), as the cluster would run it.

The compiled pipeline (`dbdgan pipeline compile --local`) is loaded back and run by `kfp.local.DockerRunner`
against podman's Docker-compatible API (`podman system service`, started here): one container per task from
the image the YAML names, as the image's non-root user, with a read-only root filesystem apart from the scratch
dirs the image declares (label io.dbdgan.scratch, tmpfs here, emptyDirs on a cluster), host networking to an
`mlflow server` (artifacts proxied to moto S3) and a moto S3 server on 127.0.0.1. Only the Kubernetes layer
(Secrets, ConfigMaps, resources) cannot exist here; tests/test_k8s_settings.py checks what the YAML asks of it.

Skips when podman or the image is missing; `make image-test` sets DBDGAN_REQUIRE_IMAGE=1, which makes that a
failure instead.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from kfp_fixtures import TINY, dummy_credentials, files_containing, mlflow_server, moto_server, stop_group

from dbdgan_kfp.components.factory import image
from dbdgan_kfp.pipelines.k8s import ClusterSettings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUCKET = "dbdgan-image"
UID = ClusterSettings().run_as_user  # what the cluster compile runs pods as: must be the image's own user


def _missing(reason: str) -> None:
    if os.environ.get("DBDGAN_REQUIRE_IMAGE") == "1":
        pytest.fail(f"{reason} (make image-test requires it)")
    pytest.skip(f"{reason}: run `make image`, then `make image-test`")


@pytest.fixture(scope="module")
def built_image() -> str:
    """The image `dbdgan pipeline compile` names by default, which must be the one `make image` built."""
    if shutil.which("podman") is None:
        _missing("podman is not installed")
    name = image()
    if subprocess.run(["podman", "image", "exists", name]).returncode != 0:
        _missing(f"image {name} is not built")
    return name


@dataclass(frozen=True)
class Sandbox:
    """What podman needs on this host (as scripts/podman-flags.sh does for the build): rlimits within the host's
    hard limits, and runc on cgroup v1 ("hybrid") hosts, where crun cannot create containers."""

    nofile: int
    nproc: int
    runtime: str | None

    @classmethod
    def of_this_host(cls) -> Sandbox:
        cgroup = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True)
        runc = cgroup.stdout.strip() != "cgroup2fs" and shutil.which("runc") is not None
        return cls(nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
                   nproc=min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096), runtime="runc" if runc else None)

    def runtime_flags(self) -> list[str]:
        return ["--runtime", self.runtime] if self.runtime else []

    def run_flags(self) -> list[str]:
        return [*self.runtime_flags(), "--ulimit", f"nofile={self.nofile}:{self.nofile}",
                "--ulimit", f"nproc={self.nproc}:{self.nproc}"]

    def docker_run_args(self) -> dict[str, object]:
        import docker

        limits = [docker.types.Ulimit(name="nofile", soft=self.nofile, hard=self.nofile),
                  docker.types.Ulimit(name="nproc", soft=self.nproc, hard=self.nproc)]
        return {"ulimits": limits, **({"runtime": self.runtime} if self.runtime else {})}


SANDBOX = Sandbox.of_this_host()


def scratch_dirs(name: str) -> list[str]:
    label = subprocess.run(["podman", "image", "inspect", "--format", '{{index .Labels "io.dbdgan.scratch"}}',
                            name], capture_output=True, text=True, check=True).stdout.split()
    assert "/tmp" in label, f"image {name} declares no scratch dirs: {label}"
    return label


@pytest.fixture(scope="module")
def docker_api(tmp_path_factory: pytest.TempPathFactory, built_image: str) -> Iterator[str]:
    """`podman system service` on a private socket; yields DOCKER_HOST for the docker SDK (kfp.local)."""
    folder = tmp_path_factory.mktemp("podman")
    socket = folder / "podman.sock"
    log = (folder / "service.log").open("wb")
    proc = subprocess.Popen(["podman", *SANDBOX.runtime_flags(), "system", "service", "--time=0", f"unix://{socket}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (folder / "service.log").read_text()
            time.sleep(0.2)
        yield f"unix://{socket}"
    finally:
        stop_group(proc)
        log.close()


def _podman_run(name: str, *command: str) -> subprocess.CompletedProcess[str]:
    tmpfs = [arg for path in scratch_dirs(name) for arg in ("--tmpfs", path)]
    return subprocess.run(["podman", "run", "--rm", *SANDBOX.run_flags(), "--read-only", *tmpfs, name, *command],
                          capture_output=True, text=True, timeout=300)


def test_image_runs_as_non_root_on_a_read_only_root(built_image: str) -> None:
    script = ("import os, sys, importlib.util as u; print(os.getuid()); print(os.environ['DBDGAN_IMAGE']); "
              "print(','.join(m for m in ('dvc', 'great_expectations', 'kfp', 'sqlalchemy') if u.find_spec(m))); "
              "open('/tmp/ok', 'w').write('scratch is writable'); open(os.path.expanduser('~/x'), 'w')")
    result = _podman_run(built_image, "python", "-c", script)
    uid, own_name, installed = result.stdout.splitlines()[:3]
    assert int(uid) == UID  # the image's default user, no --user needed
    assert own_name == built_image  # `dbdgan pipeline compile` inside the image names the image itself
    assert installed == "great_expectations,kfp"  # the components' groups; no DVC, no MLflow server
    assert result.returncode != 0 and "Read-only file system" in result.stderr  # only scratch is writable


def _built_from(name: str) -> tuple[str, bool]:
    """The full commit and dirty flag of the checkout `make image` built `name` from (its tag: -g<commit>[-dirty])."""
    suffix = name.rsplit(":", 1)[1]
    short = suffix.removesuffix("-dirty").rsplit("-g", 1)[1]
    full = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{short}^{{commit}}"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return full, suffix.endswith("-dirty")


def test_version_names_the_commit_the_image_was_built_from(built_image: str) -> None:
    """No .git and no git in the image: the commit comes from what `make image` baked in."""
    from dbdgan import __version__

    commit, dirty = _built_from(built_image)
    result = _podman_run(built_image, "dbdgan", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"dbdgan {__version__}, commit {commit}{' (dirty)' if dirty else ''}, "
                                     f"image {built_image}")


def test_compiled_pipeline_runs_in_the_image(built_image: str, docker_api: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    from kfp import components, local
    from mlflow import MlflowClient

    from dbdgan_kfp.pipelines import cli

    package = tmp_path / "pipeline.yaml"
    tiny = [arg for override in TINY for arg in ("--set", override)]
    assert cli.main(["compile", "--local", "--params", str(REPO / "params.yaml"), *tiny, "--out", str(package)]) == 0
    spec = next(yaml.safe_load_all(package.read_text()))
    images = {executor["container"]["image"] for executor in spec["deploymentSpec"]["executors"].values()}
    assert images == {built_image}  # every component runs in the image make image built
    built = REPO / "build" / "image.txt"
    if built.is_file():
        assert built.read_text().strip() == built_image

    root = tmp_path / "kfp"  # mounted into each container at the same path; written by the image's user
    root.mkdir()
    root.chmod(0o777)
    server_dir = tmp_path / "mlflow"
    server_dir.mkdir()
    monkeypatch.setenv("DOCKER_HOST", docker_api)
    credentials = dummy_credentials()
    for name in ("MLFLOW_TRACKING_URI", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    with moto_server() as s3_endpoint:
        host_env = {**credentials, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "AWS_EC2_METADATA_DISABLED": "true",
                    "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, **_boto_args(credentials))
        s3.create_bucket(Bucket=BUCKET)
        with mlflow_server(server_dir, f"s3://{BUCKET}/mlflow", host_env) as server:
            # S3 keys and endpoint reach the containers as env (per step on a cluster, from the Secret)
            container_env = {**credentials, "DBDGAN_S3_ENDPOINT_URL": s3_endpoint,
                             "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                             "DBDGAN_S3_MAX_ATTEMPTS": "2", "OMP_NUM_THREADS": "1"}
            pipeline = components.load_component_from_file(str(package))
            local.init(runner=_runner(built_image, container_env), pipeline_root=str(root),
                       raise_on_error=True, workspace_root=_workspace(tmp_path / "workspace"))
            arguments = {"mlflow_tracking_uri": server.uri,
                         "reports_uri": f"s3://{BUCKET}/reports", "experiment": "image",
                         "teacher_name": "image-teacher", "student_name": "image-student"}
            start = time.monotonic()
            try:
                pipeline(**arguments)
            finally:
                logs = capfd.readouterr()
                sys.stdout.write(logs.out[-4000:])
            elapsed = time.monotonic() - start

            client = MlflowClient(tracking_uri=server.uri)
            student = client.get_model_version_by_alias("image-student", "challenger")
            teacher = client.get_model_version_by_alias("image-teacher", "challenger")
            assert student.tags["role"] == "student" and teacher.tags["role"] == "teacher"
            assert "metric.max_f" in student.tags
            # lineage from the image: its commit and reference on the version, its run and its model card
            commit, dirty = _built_from(built_image)
            assert (student.tags["git_commit"], student.tags["git_dirty"]) == (commit, str(dirty).lower())
            assert student.tags["image"] == teacher.tags["image"] == built_image
            assert client.get_run(student.run_id).data.tags["dbdgan.git_commit"] == commit
            card = Path(client.download_artifacts(student.run_id, "model_card/student.md", str(tmp_path)))
            assert f"git commit `{commit}`" in card.read_text() and f"image: `{built_image}`" in card.read_text()

            # the same pipeline with no tracking configured stops at the first step that tracks
            local.init(runner=_runner(built_image, {"OMP_NUM_THREADS": "1"}), pipeline_root=str(root),
                       raise_on_error=True, workspace_root=_workspace(tmp_path / "workspace-untracked"))
            with pytest.raises(RuntimeError, match="train-teacher"):
                pipeline(**{**arguments, "mlflow_tracking_uri": "", "reports_uri": ""})
            untracked = capfd.readouterr().out
        objects = [obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]

    assert "no MLflow tracking server configured" in untracked and "'dbdgan-config'" in untracked, \
        untracked[-3000:]
    assert "sqlite" not in untracked.split("no MLflow tracking server configured")[0][-2000:]
    # each step ran in the image as its user: the task outputs on the host belong to that UID
    outputs = [path for path in root.rglob("*") if path.is_file()]
    owners = {path.stat().st_uid for path in outputs}
    assert outputs and owners == {UID}, owners
    tasks = {path.relative_to(root).parts[1] for path in outputs}
    assert {"prepare", "validate", "train-teacher", "distill-student", "evaluate", "register"} <= tasks, tasks
    # register and publish-reports wrote to S3 from inside their containers; MLflow proxied the models there
    for suffix in ("registered.json", "validation/_SUCCESS.json", "evaluation/_SUCCESS.json"):
        assert any(key.startswith("reports/") and key.endswith(suffix) for key in objects), (suffix, objects)
    assert any(key.startswith("mlflow/") and key.endswith("MLmodel") for key in objects)
    assert files_containing([root], credentials["AWS_SECRET_ACCESS_KEY"]) == []
    _record(built_image, elapsed)


def _workspace(path: Path) -> str:
    """The run's workspace (/kfp-workspace in each container), writable by the image's user."""
    path.mkdir()
    path.chmod(0o777)
    return str(path)


def _boto_args(credentials: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"], "region_name": "us-east-1"}


def run_and_wait(client: Any, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any) -> int:
    """kfp.local's run_docker_container without auto_remove: the exit status, then the removal.

    kfp 2.17 starts containers with auto_remove=True and, when the container is gone before `wait()` answers
    (podman removes it at exit), returns 0: a failed step reads as SUCCESS (kubeflow/pipelines#13332, fix
    proposed in #13907, not released). Waiting first keeps the status; drop this once kfp has the fix.
    """
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, **run_args)
    try:
        for line in container.logs(stream=True):
            print(line.decode(), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


@pytest.fixture(autouse=True)
def _exit_status_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from kfp.local import docker_task_handler

    monkeypatch.setattr(docker_task_handler, "run_docker_container", run_and_wait)


def _runner(name: str, environment: dict[str, str]) -> object:
    """DockerRunner with the cluster's security context: image user, read-only root, scratch on tmpfs."""
    from kfp import local

    return local.DockerRunner(read_only=True, tmpfs={path: "rw,mode=1777" for path in scratch_dirs(name)},
                              network_mode="host", environment=environment, cap_drop=["ALL"],
                              security_opt=["no-new-privileges"], **SANDBOX.docker_run_args())


def _record(name: str, seconds: float) -> None:
    """The run time beside the load average, for the report (not asserted: timing is not a test)."""
    out = REPO / "build" / "image-test.json"
    out.parent.mkdir(exist_ok=True)
    load = Path("/proc/loadavg").read_text().split()[:3]
    out.write_text(json.dumps({"image": name, "pipeline_seconds": round(seconds, 1), "loadavg": load}) + "\n")
