"""Kubernetes settings for a cluster compile: secrets as env, GPUs, scheduling, resources, retries, timeouts.

Applied only by `build_pipeline(..., cluster=ClusterSettings(...))`: `kfp.local` runs the bare pipeline (with
the retries of `set_retries`). Only names of Secrets and ConfigMaps ever enter the compiled YAML, never their
values. The S3 Secret goes only to the steps that read or write S3 (and is optional there), so a synthetic-data
run needs none.

What each step's task asks for (resources, deadline, GPUs, S3, retries) is its row's `pod` in the step table
(dbdgan.graph.STEPS); the tasks that are pipeline plumbing, not steps, declare theirs in `PLUMBING` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kfp import kubernetes
from kfp.dsl import PipelineTask

from dbdgan.graph import HOUR, STEPS, Pod, Resources

# The pipeline's tasks that run no step of the table. MLflow artifacts go through the tracking server (`mlflow
# server --artifacts-destination`); with a server that does not proxy them, add the tracking steps (--s3-steps).
PLUMBING = {
    "publish_reports": Pod(Resources("500m", "1Gi"), HOUR // 2, s3=True),
    "announce_champion": Pod(Resources("100m", "256Mi"), HOUR // 6),
    "import_teacher": Pod(Resources("1", "4Gi"), HOUR // 2, s3=True),  # an s3:// teacher
}
# Task keys used by dbdgan_kfp.pipelines.pipeline are the step names of dbdgan.graph.STEPS and PLUMBING's.
PODS = {**{one.name: one.pod for one in STEPS}, **PLUMBING}
GPU_STEPS = tuple(name for name, spec in PODS.items() if spec.gpu)
S3_STEPS = tuple(name for name, spec in PODS.items() if spec.s3)
DEFAULT_RESOURCES = {name: spec.resources for name, spec in PODS.items()}
DEFAULT_TIMEOUTS = {name: spec.timeout_s for name, spec in PODS.items()}


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = "NoSchedule"


# Bounded MLflow client retries: a tracking server that is down fails the step in about a minute.
MLFLOW_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
                     "DBDGAN_S3_MAX_ATTEMPTS": "5"}


@dataclass(frozen=True)
class ClusterSettings:
    """Everything cluster-specific; the defaults match docs/kubernetes.md."""

    # Secret with the S3/MinIO keys (None: rely on a pod identity such as IRSA or workload identity).
    s3_secret: str | None = "dbdgan-s3"
    s3_secret_keys: dict[str, str] = field(default_factory=lambda: {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
    # Optional Secret with MLflow credentials (basic auth or token of a secured tracking server).
    mlflow_secret: str | None = "dbdgan-mlflow"
    mlflow_secret_keys: dict[str, str] = field(default_factory=lambda: {
        "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"})
    # Optional ConfigMap with the non-secret endpoints (tracking URI, S3 endpoint for MinIO).
    config_map: str | None = "dbdgan-config"
    config_map_keys: dict[str, str] = field(default_factory=lambda: {
        "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
        "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION"})
    accelerator_type: str = "nvidia.com/gpu"
    gpus: int = 0  # GPUs per training step: CPU unless asked (the default image is the CPU build)
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: tuple[Toleration, ...] = (Toleration("nvidia.com/gpu"),)
    shm_size: str = "8Gi"  # /dev/shm for DataLoader workers on the GPU steps
    resources: dict[str, Resources] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    retries: int = 2
    timeouts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))  # seconds per step
    image_pull_secrets: tuple[str, ...] = ()
    s3_steps: tuple[str, ...] = S3_STEPS
    run_as_user: int | None = 10001  # the image's user (Dockerfile); None: leave the pod's identity alone
    env: dict[str, str] = field(default_factory=lambda: dict(MLFLOW_CLIENT_ENV))


PRETRAIN_PREFIX = "pretrain_"


def step_of(task_key: str) -> str:
    """The step a task runs: `pretrain_<step>` (synthetic pre-training) repeats <step>."""
    return task_key.removeprefix(PRETRAIN_PREFIX)


def pod(task_key: str) -> Pod:
    """What a task asks for: its step's row (dbdgan.graph.STEPS) or its PLUMBING entry."""
    name = step_of(task_key)
    if name not in PODS:
        raise KeyError(f"no step or pipeline task {name!r}; known: {', '.join(PODS)}")
    return PODS[name]


def apply(tasks: dict[str, PipelineTask], settings: ClusterSettings) -> None:
    """Attach the settings to each task, keyed by step name (see dbdgan_kfp.pipelines.pipeline).

    A synthetic pre-training task (`pretrain_<step>`) gets the settings of <step>.
    """
    for name, task in tasks.items():
        step = step_of(name)
        if settings.s3_secret and step in settings.s3_steps:
            # optional: the same step reads local or synthetic data without it; an S3 access without keys fails
            # in dbdgan.storage with the bucket and endpoint named
            kubernetes.use_secret_as_env(task, settings.s3_secret, dict(settings.s3_secret_keys), optional=True)
        if settings.mlflow_secret:
            kubernetes.use_secret_as_env(task, settings.mlflow_secret, dict(settings.mlflow_secret_keys),
                                         optional=True)
        if settings.config_map:
            kubernetes.use_config_map_as_env(task, settings.config_map, dict(settings.config_map_keys),
                                             optional=True)
            # named by a component's error when MLFLOW_TRACKING_URI is missing (components/_runtime.py)
            task.set_env_variable("DBDGAN_CONFIG_MAP", settings.config_map)
        if settings.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(settings.image_pull_secrets))
        if settings.run_as_user is not None:
            kubernetes.set_security_context(task, run_as_user=settings.run_as_user,
                                            run_as_group=settings.run_as_user, run_as_non_root=True)
        for key, value in settings.env.items():
            task.set_env_variable(key, value)
        resources = settings.resources.get(step)
        if resources is not None:
            task.set_cpu_request(resources.cpu).set_memory_request(resources.memory)
            task.set_cpu_limit(resources.cpu_limit or resources.cpu)
            task.set_memory_limit(resources.memory_limit or resources.memory)
        set_retries(task, step, settings.retries)
        kubernetes.set_timeout(task, settings.timeouts[step])
        if pod(step).gpu and settings.gpus > 0:
            _gpu(task, settings)


def set_retries(task: PipelineTask, step: str, retries: int, backoff: str = "30s") -> None:
    """Retry a failed task (a pre-empted node, a timeout) when its step allows it (`Pod.retry`: a training task
    resumes from its checkpoint; registering, which is not idempotent, is never retried)."""
    if retries and pod(step).retry:
        task.set_retry(num_retries=retries, backoff_duration=backoff, backoff_factor=2.0,
                       backoff_max_duration="3600s")


def _gpu(task: PipelineTask, settings: ClusterSettings) -> None:
    task.set_accelerator_type(settings.accelerator_type).set_accelerator_limit(settings.gpus)
    for key, value in settings.gpu_node_selector.items():
        kubernetes.add_node_selector(task, key, value)
    for tol in settings.gpu_tolerations:
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value,
                                  effect=tol.effect)
    if settings.shm_size:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=settings.shm_size)
