"""`dbdgan pipeline compile | run-local | submit`: the KFP pipeline from the command line.

Entry point: `main(argv) -> exit code`. Secrets never pass through here: a KFP token comes from
$KFP_TOKEN (or --token) and goes only to kfp.Client; S3 and MLflow credentials stay in the environment
(locally) or in Kubernetes Secrets (on a cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dbdgan.redact import redact, redact_tree

TOKEN_ENV = "KFP_TOKEN"
HOST_ENV = "KFP_HOST"


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_build_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", action="append", default=None, metavar="FILE",
                        help="params file (default: params.yaml); repeat to overlay a profile on it. The "
                             "merged, validated params (with --set) are baked into the tasks, each its step's part")
    parser.add_argument("--pretrain-params", action="append", default=None, metavar="FILE",
                        help="add synthetic pre-training: its params files (repeat to overlay), e.g. "
                             "--pretrain-params params.yaml --pretrain-params profiles/synthetic-pretrain.yaml; "
                             "the real teacher and student then start from the pre-trained ones")
    parser.add_argument("--image", help="component image or digest (default: $DBDGAN_IMAGE, else the tag `make "
                                         "image` builds from this checkout: `dbdgan pipeline image-tag`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="param override, e.g. --set train_teacher.epochs=2 (repeatable); applied at compile "
                             "time, and each task gets only the params its step reads (its cache key)")
    parser.add_argument("--teacher", default="", metavar="URI",
                        help="distil from this teacher instead of training one: models:/NAME/VERSION, "
                             "models:/NAME@ALIAS, s3://bucket/key.pt or a file the pods can read")
    parser.add_argument("--workspace-size", default=None, metavar="SIZE",
                        help="the run's workspace PVC, where training checkpoints survive a retried task (default "
                             "20Gi; 0: none, a retry starts training from epoch 1)")
    parser.add_argument("--workspace-storage-class", default="", metavar="CLASS",
                        help="storage class of the workspace PVC (default: the cluster's default class)")


def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    from dbdgan_kfp.pipelines.k8s import S3_STEPS

    g = parser.add_argument_group("cluster settings (see docs/kubernetes.md)")
    g.add_argument("--s3-secret", default="dbdgan-s3",
                   help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY ('' = none: use a pod identity)")
    g.add_argument("--mlflow-secret", default="dbdgan-mlflow", help="optional Secret with MLflow credentials")
    g.add_argument("--config-map", default="dbdgan-config",
                   help="optional ConfigMap with MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, ...")
    g.add_argument("--s3-steps", type=lambda text: tuple(s for s in text.split(",") if s), metavar="STEP,...",
                   help=f"steps that get the S3 Secret (default: {', '.join(S3_STEPS)}; add the training steps "
                        "when the MLflow server does not proxy artifacts)")
    g.add_argument("--gpus", type=int, default=0, help="GPUs per training step (default 0: CPU training)")
    g.add_argument("--accelerator", default="nvidia.com/gpu", help="accelerator resource name")
    g.add_argument("--gpu-node-selector", type=_key_value, action="append", metavar="KEY=VALUE",
                   help="node label for training pods (repeatable; default nvidia.com/gpu.present=true)")
    g.add_argument("--gpu-toleration", action="append", metavar="KEY",
                   help="taint key the training pods tolerate (Exists, NoSchedule; default nvidia.com/gpu)")
    g.add_argument("--cpu", type=_key_value, action="append", default=[], metavar="STEP=REQUEST[,LIMIT]",
                   help="CPU request and limit of a step, e.g. train_teacher=4,8 (limit default: the request)")
    g.add_argument("--memory", type=_key_value, action="append", default=[], metavar="STEP=REQUEST[,LIMIT]",
                   help="memory request and limit of a step, e.g. train_teacher=16Gi (repeatable)")
    g.add_argument("--retries", type=int, default=2, help=f"retries of each step except {_not_retried()}")
    g.add_argument("--timeout", type=_key_value, action="append", default=[], metavar="STEP=SECONDS",
                   help="a step's pod deadline (activeDeadlineSeconds), e.g. train_teacher=172800 (repeatable; "
                        "defaults in docs/kubernetes.md); a timed-out step fails and is retried")
    g.add_argument("--image-pull-secret", action="append", default=[], help="image pull Secret (repeatable)")


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run arguments")
    g.add_argument("--data-uri", default="",
                   help="raw dataset of the data.source layout: folder or s3://bucket/prefix ('' = synthetic)")
    g.add_argument("--reports-uri", default="", help="s3://bucket/prefix to copy reports to ('' = off)")
    g.add_argument("--mlflow-uri", default="",
                   help="MLflow tracking URI ('' = $MLFLOW_TRACKING_URI: a pod without it fails; "
                        "run-local then uses the local sqlite store)")
    g.add_argument("--mlflow-experiment", help="MLflow experiment (default: dbdgan)")
    g.add_argument("--pretrain-experiment", help="MLflow experiment of pre-training (default: dbdgan-pretrain)")
    g.add_argument("--teacher-name", help="registered teacher name (default: dbd-teacher)")
    g.add_argument("--student-name", help="registered student name (default: dbd-student)")


def _not_retried() -> str:
    from dbdgan.graph import STEPS

    return ", ".join(one.name for one in STEPS if not one.pod.retry)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dbdgan pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="write the pipeline IR YAML")
    _add_build_args(p)
    p.add_argument("--out", default="pipeline.yaml", help="output file (default: pipeline.yaml)")
    p.add_argument("--local", action="store_true", help="omit the Kubernetes settings")
    _add_cluster_args(p)

    p = sub.add_parser("image-tag", help="print the image tag `make image` builds and compile names")
    p.add_argument("--repo", help="image repository (default: $DBDGAN_IMAGE_REPO or localhost/dbdgan)")

    p = sub.add_parser("run-local", help="run the pipeline on this machine with kfp.local (SubprocessRunner); a "
                                         "trial: it registers as dbd-{teacher,student}-local in MLflow experiment "
                                         "dbdgan-local unless --teacher-name/--student-name/--mlflow-experiment "
                                         "name others")
    _add_build_args(p)
    p.add_argument("--pipeline-root", default="outputs/kfp", help="task outputs (default: outputs/kfp)")
    p.add_argument("--workspace", default=None, metavar="DIR",
                   help="the run's workspace folder (default: a new one under the pipeline root; kfp.local "
                        "removes it when the run ends)")
    p.add_argument("--retries", type=int, default=0,
                   help=f"retries of each step except {_not_retried()}, as on a cluster (default 0)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="stream kfp.local's output and every task's logs (default: one line per task, and the "
                        "failed task's last lines)")
    _add_run_args(p)

    p = sub.add_parser("submit", help="compile for the cluster and start a run with kfp.Client")
    _add_build_args(p)
    p.add_argument("--host", default=os.environ.get(HOST_ENV), help=f"KFP endpoint (default: ${HOST_ENV})")
    p.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV}, safer: flags show in ps)")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user deployments)")
    p.add_argument("--experiment", default="dbdgan", help="KFP experiment (default: dbdgan)")
    p.add_argument("--run-name", help="run name (default: pipeline name + time)")
    p.add_argument("--no-cache", action="store_true", help="disable caching for this run")
    _add_run_args(p)
    _add_cluster_args(p)
    return parser


def _params_text(paths: list[str] | None, overrides: list[str] | None = None) -> str:
    """The params files merged with the overrides and validated (as the CLI does), as one line of JSON."""
    from dbdgan.config import load_params

    files = [Path(p) for p in paths or ["params.yaml"]]
    return json.dumps(redact_tree(load_params(files, list(overrides or [])).model_dump(mode="json")),
                      separators=(",", ":"))


def _timeouts(args: argparse.Namespace) -> dict[str, int]:
    """DEFAULT_TIMEOUTS with the --timeout overrides (`STEP=SECONDS`) applied."""
    from dbdgan_kfp.pipelines.k8s import DEFAULT_TIMEOUTS

    table = dict(DEFAULT_TIMEOUTS)
    for step, text in args.timeout:
        if step not in table:
            raise ValueError(f"--timeout {step}={text}: unknown step {step!r}; steps: {', '.join(table)}")
        if not text.isdigit() or int(text) <= 0:
            raise ValueError(f"--timeout {step}={text}: expected a whole number of seconds above 0")
        table[step] = int(text)
    return table


def _resources(args: argparse.Namespace) -> dict[str, Any]:
    """DEFAULT_RESOURCES with the --cpu/--memory overrides (`STEP=REQUEST[,LIMIT]`) applied."""
    from dataclasses import replace

    from dbdgan_kfp.pipelines.k8s import DEFAULT_RESOURCES

    table = dict(DEFAULT_RESOURCES)
    for flag, kind in (("--cpu", "cpu"), ("--memory", "memory")):
        for step, text in getattr(args, kind):
            if step not in table:
                raise ValueError(f"{flag} {step}={text}: unknown step {step!r}; steps: {', '.join(table)}")
            request, _, limit = text.partition(",")
            if not request:
                raise ValueError(f"{flag} {step}={text}: expected REQUEST[,LIMIT], e.g. {step}=2,4")
            table[step] = replace(table[step], **{kind: request, f"{kind}_limit": limit or None})
    return table


def _cluster(args: argparse.Namespace) -> Any:
    from dbdgan_kfp.pipelines.k8s import ClusterSettings, Toleration

    kwargs: dict[str, Any] = {
        "s3_secret": args.s3_secret or None, "mlflow_secret": args.mlflow_secret or None,
        "config_map": args.config_map or None, "gpus": args.gpus, "accelerator_type": args.accelerator,
        "retries": args.retries, "image_pull_secrets": tuple(args.image_pull_secret),
        "resources": _resources(args), "timeouts": _timeouts(args),
    }
    if args.s3_steps is not None:
        unknown = sorted(set(args.s3_steps) - set(kwargs["resources"]))
        if unknown:
            raise ValueError(f"--s3-steps: unknown step {', '.join(unknown)}; steps: {', '.join(kwargs['resources'])}")
        kwargs["s3_steps"] = args.s3_steps
    if args.gpu_node_selector:
        kwargs["gpu_node_selector"] = dict(args.gpu_node_selector)
    if args.gpu_toleration:
        kwargs["gpu_tolerations"] = tuple(Toleration(key) for key in args.gpu_toleration)
    return ClusterSettings(**kwargs)


def _pipeline(args: argparse.Namespace, cluster: Any, retries: int = 0, uncached: tuple[str, ...] = ()) -> Any:
    from dbdgan_kfp.pipelines.pipeline import DEFAULT_WORKSPACE_SIZE, build_pipeline

    pretrain_text = _params_text(args.pretrain_params) if args.pretrain_params else ""
    size = args.workspace_size if args.workspace_size is not None else DEFAULT_WORKSPACE_SIZE
    return build_pipeline(_params_text(args.params, args.overrides), cluster=cluster, image=args.image,
                          pretrain_text=pretrain_text, teacher=args.teacher.strip(), workspace_size=size,
                          workspace_storage_class=args.workspace_storage_class, local_retries=retries,
                          uncached=uncached)


def compile_pipeline(args: argparse.Namespace, out: Path, cluster: Any, uncached: tuple[str, ...] = ()) -> Path:
    from kfp import compiler

    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(_pipeline(args, cluster, uncached=uncached), str(out))
    return out


def _data_digest(data_uri: str) -> str | None:
    """The digest of an s3:// dataset as it is now (its _SUCCESS.json), which keys prepare's cache.

    "" for other data; None when it cannot be read from here (then prepare is not cached for this run).
    """
    from dbdgan.storage import StorageError, dataset_digest, is_s3_uri

    if not is_s3_uri(data_uri.strip()):
        return ""
    try:
        return dataset_digest(data_uri.strip())
    except StorageError as exc:
        print(f"dbdgan pipeline: warning: {redact(str(exc))}; prepare will not reuse a cached result in this "
              "run", file=sys.stderr)
        return None


def _run_arguments(args: argparse.Namespace, digest: str | None) -> dict[str, Any]:
    """Pipeline arguments from flags; unset optional flags keep the pipeline's own defaults."""
    arguments: dict[str, Any] = {"data_uri": args.data_uri, "data_digest": digest or "",
                                 "reports_uri": args.reports_uri, "mlflow_tracking_uri": args.mlflow_uri}
    optional = {"experiment": args.mlflow_experiment, "pretrain_experiment": args.pretrain_experiment,
                "teacher_name": args.teacher_name, "student_name": args.student_name}
    arguments.update({key: value for key, value in optional.items() if value is not None})
    return arguments


def _cmd_compile(args: argparse.Namespace) -> int:
    out = compile_pipeline(args, Path(args.out), None if args.local else _cluster(args))
    print(f"wrote {out}{' (no Kubernetes settings)' if args.local else ''}")
    return 0


def _cmd_image_tag(args: argparse.Namespace) -> int:
    from dbdgan_kfp.components.factory import build_tag

    print(build_tag(args.repo))
    return 0


# A trial run on this machine (often a tiny one) registers beside the real models, never as a new version of
# them or a move of their `challenger`: names and an experiment of its own unless the flags name others.
LOCAL_TRIAL = {"mlflow_experiment": "dbdgan-local", "teacher_name": "dbd-teacher-local",
               "student_name": "dbd-student-local"}


def local_trial(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with run-local's own experiment and model names where the user gave none."""
    own = {key: value for key, value in LOCAL_TRIAL.items() if getattr(args, key, None) is None}
    return argparse.Namespace(**{**vars(args), **own})


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class TaskLines(io.TextIOBase):
    """What kfp.local prints, one line per task: its own log lines and every task's streamed logs arrive here.

    kfp.local (2.x) writes all of it to sys.stdout: its log records through a handler it makes on sys.stdout for
    each task (`Executing task 'NAME'`, `Task 'NAME' finished with status STATUS`, the outputs, a rule), the
    task's subprocess output through print(); retries and skipped tasks are records of the root logger. A line
    per finished task goes to `out`; the lines of the task that ran last are kept (`failed`), so that a failure
    can show its error without the hundreds of lines before it.
    """

    STARTED = re.compile(r"Executing task '([^']+)'")
    FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
    OUTPUT = re.compile(r"^\s+Output: '(.*)'$")  # a task's single return value (register's gate decision)
    RETRY = re.compile(r"Task (\S+) failed \(attempt (\d+)/(\d+)\)")
    SKIPPED = re.compile(r"Skipping (conditional )?task ([^\s:]+)")

    def __init__(self, out: Any, tail: int = 60, labels: dict[str, str] | None = None) -> None:
        super().__init__()
        self.out = out
        self.labels = dict(labels or {})  # task key -> the name to say (a condition's `dsl.If(name=...)`)
        self._partial = ""
        self._task: str | None = None
        self._status: str | None = None
        self._value: str | None = None
        self._started = self._seconds = 0.0
        self._lines: deque[str] = deque(maxlen=tail)
        self._skip_to: str | None = None  # the line that ends the executor's input JSON, which says nothing new
        self.failed: tuple[str, list[str]] | None = None  # the last failed task and its last lines
        self.finished: list[tuple[str, str]] = []  # (task, status) in order

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line).rstrip())
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def close_task(self) -> None:
        """Say the line of the task that finished last, if not said yet."""
        if self._task is None or self._status is None:
            return
        value = f" -> {self._value}" if self._value else ""
        self._say(f"{self._task}: {self._status} in {self._seconds:.0f} s{value}")
        self.finished.append((self._task, self._status))
        if self._status != "SUCCESS":
            self.failed = (self._task, [line for line in self._lines if line.strip()])
        self._task = self._status = self._value = None

    def _say(self, text: str) -> None:
        print(f"  {text}", file=self.out, flush=True)

    def _line(self, line: str) -> None:
        started = self.STARTED.search(line)
        if started:
            self.close_task()
            self._task, self._started = started[1], time.monotonic()
            self._lines.clear()
            return
        if self._skip_to is not None:
            if line == self._skip_to:
                self._skip_to = None
            return
        if line.endswith("Got executor_input:"):
            self._skip_to = line[: len(line) - len(line.lstrip())] + "}"
            return
        self._lines.append(line)
        finished, output = self.FINISHED.search(line), self.OUTPUT.match(line)
        retry, skipped = self.RETRY.search(line), self.SKIPPED.search(line)
        if finished and finished[1] == self._task:
            self._status, self._seconds = finished[2], time.monotonic() - self._started
        elif output and self._status:
            self._value = output[1]
        elif line.startswith("-----") and not line.strip("-"):  # the rule after each task
            self.close_task()
        elif retry:
            self.close_task()
            self._say(f"{retry[1]}: attempt {retry[2]} of {retry[3]} failed, retrying")
        elif skipped:
            name = self.labels.get(skipped[2], skipped[2])
            self._say(f"{name}: skipped ({'its condition is false' if skipped[1] else 'a task before failed'})")


@contextlib.contextmanager
def _task_lines(verbose: bool, pipeline: Any = None) -> Iterator[TaskLines | None]:
    """kfp.local's output as one line per task (`TaskLines`), or all of it with --verbose; `pipeline` (a compiled
    pipeline function) names its conditions."""
    if verbose:
        yield None
        return
    spec = getattr(pipeline, "pipeline_spec", None)
    labels = {key: task.task_info.name for key, task in spec.root.dag.tasks.items()
              if key.startswith("condition-") and task.task_info.name} if spec is not None else {}
    lines = TaskLines(sys.stdout, labels=labels)
    handler = logging.StreamHandler(lines)  # the root logger's records outside kfp's own handler: retries, skips
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(lines):
            yield lines
    except Exception:
        lines.close_task()
        if lines.failed:
            task, tail = lines.failed
            print(f"dbdgan pipeline run-local: task {task} failed; its last lines (all of them with -v):",
                  *(f"    {line}" for line in tail), sep="\n", file=sys.stderr)
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines.close_task()


def _cmd_run_local(args: argparse.Namespace) -> int:
    from kfp import local

    args = local_trial(args)
    root = Path(args.pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    workspace = Path(args.workspace).resolve() if args.workspace else Path(tempfile.mkdtemp(prefix="workspace-",
                                                                                              dir=root))
    workspace.mkdir(parents=True, exist_ok=True)
    digest = _data_digest(args.data_uri)
    pipeline = _pipeline(args, None, retries=args.retries, uncached=_raw_readers() if digest is None else ())
    # Components never fall back to a local store (in a pod it would vanish); on this machine the CLI's
    # default is the right one, so run-local names it explicitly.
    from dbdgan.tracking import LOCAL_STORE

    local_store = "sqlite:///" + str(Path(LOCAL_STORE.removeprefix("sqlite:///")).resolve())
    args.mlflow_uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "") or local_store
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
               workspace_root=str(workspace))
    start = time.monotonic()
    print(f"running the pipeline with kfp.local (tracking: {redact(args.mlflow_uri)})"
          f"{'' if args.verbose else '; every task log with -v'}", flush=True)
    with warnings.catch_warnings(), _task_lines(args.verbose, pipeline) as lines:
        # The SubprocessRunner warns for any image name without "python" in it; ours runs in this venv.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        # Display names only label the KFP UI.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        pipeline(**_run_arguments(args, digest))
    tasks = f"{len(lines.finished)} tasks, " if lines else ""
    print(f"pipeline finished in {(time.monotonic() - start) / 60:.1f} min ({tasks}registered as "
          f"{args.teacher_name} / {args.student_name} in experiment {args.mlflow_experiment}); task outputs under "
          f"{root}")
    return 0


def _raw_readers() -> tuple[str, ...]:
    """The steps that read the raw dataset (its digest keys their cache): never cached when it is unknown."""
    from dbdgan.graph import RAW, STEPS

    return tuple(one.name for one in STEPS if one.takes(RAW.argument))


def _cmd_submit(args: argparse.Namespace) -> int:
    import kfp

    if not args.host:
        raise ValueError(f"no KFP endpoint: pass --host or set ${HOST_ENV}")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    digest = "" if args.no_cache else _data_digest(args.data_uri)  # without caching no result can be stale
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(args, Path(tmp) / "pipeline.yaml", _cluster(args),
                                   uncached=_raw_readers() if digest is None else ())
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="This client only works", category=FutureWarning)
                client = kfp.Client(host=args.host, existing_token=token,
                                    **({"namespace": args.namespace} if args.namespace else {}))
            result = client.create_run_from_pipeline_package(
                str(package), arguments=_run_arguments(args, digest), run_name=args.run_name,
                experiment_name=args.experiment, namespace=args.namespace,
                enable_caching=False if args.no_cache else None)
        except Exception as exc:  # urllib3/kfp_server_api errors share no base class worth naming
            reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
            raise RuntimeError(f"cannot submit to KFP at {args.host}: {reason}") from None
    print(f"submitted run {result.run_id}")
    print(f"{args.host.rstrip('/')}/#/runs/details/{result.run_id}")
    return 0


COMMANDS = {"compile": _cmd_compile, "image-tag": _cmd_image_tag, "run-local": _cmd_run_local,
            "submit": _cmd_submit}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        message = redact(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)))  # kfp.local colours its messages
        print(f"dbdgan pipeline {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
