"""Real local services for the storage and KFP tests: a moto S3 server and an `mlflow server` on 127.0.0.1.

Plain context managers (not fixtures) so that each test module wraps them at the scope it needs; the suite's
one S3 endpoint is conftest's session fixture `moto_endpoint`, made with `moto_server()` here.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline_fixtures import TINY_OVERRIDES

# profiles/tiny.yaml as `--set` overrides: a pipeline run of a few seconds per step (kfp.local, in-image runs)
TINY = TINY_OVERRIDES
SECRET_PREFIX = "PLANTEDSECRET"
REPO = Path(__file__).resolve().parents[1]


def component_params(*overrides: str) -> str:
    """A component's `params` input as the pipeline compiles it: params.yaml with overrides, as JSON."""
    import json

    from dbdgan.config import load_params

    return json.dumps(load_params(REPO / "params.yaml", list(overrides)).model_dump(mode="json"))


def pipeline_tasks(spec: dict) -> dict[str, dict]:
    """Task name -> task spec of a compiled pipeline, from the root DAG and every condition sub-DAG."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def port_closed(uri: str, timeout: float = 10.0) -> bool:
    """Nothing accepts connections at the host:port of `uri` any more (an outage test checks this first)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) != 0:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dummy_credentials() -> dict[str, str]:
    """Throwaway credentials for moto; the secret is recognisable so that tests can search outputs for it."""
    return {"AWS_ACCESS_KEY_ID": f"AKIATEST{secrets.token_hex(6).upper()}",
            "AWS_SECRET_ACCESS_KEY": f"{SECRET_PREFIX}{secrets.token_hex(12)}",
            "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def moto_server() -> Iterator[str]:
    """An in-process moto S3 server (ThreadedMotoServer) on a free 127.0.0.1 port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                output = log.read_text(errors="replace")
                raise RuntimeError(f"server at {url} did not start:\n{output}") from exc
            time.sleep(0.25)


@dataclass
class MlflowServer:
    uri: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Stop the server and its workers: the whole process group it leads (SIGTERM, then SIGKILL)."""
        stop_group(self.proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process group `proc` leads (SIGTERM, then SIGKILL), workers included, and reap the leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader so that the group can disappear
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait()
                return
            time.sleep(0.2)
    proc.wait()


@contextmanager
def mlflow_server(workdir: Path, artifacts_destination: str, env: dict[str, str],
                  port: int | None = None) -> Iterator[MlflowServer]:
    """`mlflow server` with a sqlite store in `workdir` and proxied artifacts at `artifacts_destination`."""
    port = port or free_port()
    log = workdir / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--artifacts-destination", artifacts_destination, "--workers", "1"]
    with log.open("ab") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=workdir,
                                env={**os.environ, **env}, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait_http(f"{server.uri}/health", proc, log, timeout=90)
        yield server
    finally:
        server.stop()


def files_containing(roots: list[Path], needle: str) -> list[Path]:
    """Every file under `roots` whose bytes contain `needle`."""
    token = needle.encode()
    hits = []
    for root in roots:
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        hits.extend(p for p in paths if token in p.read_bytes())
    return hits
