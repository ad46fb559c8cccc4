"""The root DVC pipeline end to end: its history and storage, in a temporary git repository on the tiny profile.

The suite's one scenario of the root dvc.yaml (every other test of it reads the plan, not a run): `make run`
(all stages, real MLflow registry), a no-op `dvc repro` (only register reruns, reusing its versions), change one
param, `make run` again: `dvc metrics diff`, `dvc plots diff` and `dvc exp show` then
compare both runs, because dvc.lock and the small metrics files are committed (cache: false) while data and
models go to the DVC cache. Those outputs round-trip through `dvc push` / `dvc pull` to an S3 remote (the
repository's own .dvc/config, pointed at a moto server on 127.0.0.1; credentials from the environment only).
Real `make`, `git`, `dvc` and MLflow (sqlite); nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import yaml
from pipeline_fixtures import REPO, tiny_tree

from dbdgan.graph import STEPS

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
STAGES = [step.name for step in STEPS]
# Cached by DVC (and so pushed): everything the stages write except the git-tracked metrics and the
# per-machine registration record.
CACHED = ("data/prepared", "reports/validation/validation.json", "models/teacher.pt", "models/student.pt",
          "metrics/onnx")


def _env() -> dict[str, str]:
    """No virtual environment on PATH: the stages must find the CLI through inputs.yaml."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN)
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def _set_param(repo: Path, section: str, key: str, value: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _registry(repo: Path) -> dict[str, tuple[int, int]]:
    """Registered model -> (its challenger's version, how many versions it has) in the repo's MLflow store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow/mlflow.db")
    return {name: (int(client.get_model_version_by_alias(name, "challenger").version),
                   len(client.search_model_versions(f"name='{name}'"))) for name in ("dbd-teacher", "dbd-student")}


def _hashes(repo: Path) -> dict[str, str]:
    found = {}
    for name in CACHED:
        path = repo / name
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                found[file.relative_to(repo).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> dict:
    """A fresh clone's layout; `make run`, commit, one param changed, `make run` again."""
    repo = tmp_path_factory.mktemp("history")
    for name in ("Makefile", "dvc.yaml", "inputs.yaml", ".gitignore", ".dvcignore", "data/.gitignore",
                 "data/README.md", "mlflow/README.md", "pyproject.toml", "constraints.txt", "scripts/dbdgan"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "src" / "dbdgan", repo / "src" / "dbdgan", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)  # what `make install` made
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_tree(), sort_keys=False))  # profiles/tiny.yaml
    git_env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": str(repo.parent / "gitconfig"),
               "GIT_CONFIG_NOSYSTEM": "1"}
    os.environ.update(git_env)  # restored below; dvc's own git calls need the identity too
    try:
        _run(["git", "init", "-q"], repo)
        _run([DVC, "init", "-q"], repo)
        shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the documented remote
        _run(["git", "add", "-A"], repo)
        _run(["git", "commit", "-qm", "fresh clone"], repo)
        make = ["make", "-s", "-o", ".venv/.installed", "run"]
        first = _run(make, repo)
        runs = {"first": first, "metrics_show": json.loads(_run([DVC, "metrics", "show", "--json"], repo)),
                "registered": json.loads((repo / "reports" / "registered.json").read_text()),
                "metrics": {role: json.loads((repo / "metrics" / f"{role}.json").read_text())
                            for role in ("teacher", "student")},
                "registry_first": _registry(repo)}
        _run(["git", "add", "-A"], repo)
        tracked = _run(["git", "ls-files"], repo).split()
        _run(["git", "commit", "-qm", "first run"], repo)
        runs["noop"] = _run([DVC, "repro"], repo)  # nothing changed
        runs["registry_noop"] = _registry(repo)
        _set_param(repo, "distill_student", "epochs", 2)
        runs["second"] = _run(make, repo)
        runs["registry_second"] = _registry(repo)
        yield {"repo": repo, "tracked": tracked, **runs}
    finally:
        for key in git_env:
            os.environ.pop(key, None)


def test_every_stage_runs_and_registers_its_evaluated_models(history):
    """The first `make run`: every stage, metrics in range, the challengers those registered.json names, tagged
    with the scores the evaluate step wrote."""
    from mlflow import MlflowClient

    assert _ran(history["first"]) == STAGES
    metrics_files = next(iter(history["metrics_show"].values()))["data"]  # the workspace's
    for role in ("teacher", "student"):
        data = metrics_files[f"metrics/{role}.json"]["data"]
        assert 0.0 <= data["max_f"] <= 1.0
        assert 0.0 <= data["mae"] <= 1.0
    client = MlflowClient(tracking_uri=f"sqlite:///{history['repo']}/mlflow/mlflow.db")
    registered = history["registered"]
    for role, name in (("teacher", "dbd-teacher"), ("student", "dbd-student")):
        assert history["registry_first"][name] == (registered[role]["version"], 1)
        version = client.get_model_version(name, str(registered[role]["version"]))
        assert float(version.tags["metric.max_f"]) == pytest.approx(history["metrics"][role]["max_f"], rel=1e-5)


def test_a_rerun_reruns_only_what_changed_and_reuses_unchanged_versions(history):
    """Nothing changed: only register reruns (always), and its versions are reused, not duplicated. One
    distillation param changed: distillation and what follows it rerun; the student gets version 2, the
    unchanged teacher keeps its version."""
    assert _ran(history["noop"]) == ["register"]
    assert history["registry_noop"] == history["registry_first"] == {"dbd-teacher": (1, 1), "dbd-student": (1, 1)}
    assert _ran(history["second"]) == ["distill_student", "evaluate", "register"]
    assert history["registry_second"] == {"dbd-teacher": (1, 1), "dbd-student": (2, 2)}


def test_make_run_ends_with_the_numbers_and_commits_what_dvc_compares(history):
    repo, tracked = history["repo"], history["tracked"]
    student = json.loads((repo / "metrics" / "student.json").read_text())
    tail = history["second"][history["second"].index("Results ("):]
    student_row = next(line.split() for line in tail.splitlines() if line.split()[:1] == ["student"])
    assert student_row[1:4] == [f"{student['infocus_max_f']:.3f}", f"{student['max_f']:.3f}", f"{student['mae']:.3f}"]
    assert any(line.split()[:2] == ["baseline", "laplacian"] for line in tail.splitlines())
    assert "metrics/plots/grid.png" in tail and '"gate"' not in tail
    for name in ("dvc.lock", "metrics/student.json", "metrics/teacher.json", "metrics/baseline_laplacian.json",
                 "metrics/plots/f_student.csv", "metrics/plots/curves.png", "data/README.md", "mlflow/README.md"):
        assert name in tracked, f"{name} is not in git"
    for prefix in ("models/", "data/prepared", "metrics/onnx", "mlflow/mlflow.db", "mlflow/artifacts", "checkpoints/",
                   "reports/"):
        assert not [t for t in tracked if t.startswith(prefix)], f"{prefix} should stay out of git"


def test_metrics_diff_plots_diff_and_exp_show_compare_both_runs(history):
    repo = history["repo"]
    head = json.loads(_run(["git", "show", "HEAD:metrics/student.json"], repo))
    now = json.loads((repo / "metrics" / "student.json").read_text())
    diff = json.loads(_run([DVC, "metrics", "diff", "--all", "--json"], repo))
    row = diff["metrics/student.json"]["max_f"]
    assert (row["old"], row["new"]) == (pytest.approx(head["max_f"]), pytest.approx(now["max_f"]))
    assert diff["metrics/teacher.json"]["mae"]["old"] == pytest.approx(diff["metrics/teacher.json"]["mae"]["new"])
    params = json.loads(_run([DVC, "params", "diff", "--json"], repo))
    assert params["params.yaml"]["distill_student.epochs"] == {"old": 1, "new": 2, "diff": 1}

    shown = json.loads(_run([DVC, "exp", "show", "--json"], repo))
    rows = {entry["rev"]: entry for entry in shown}
    values = {rev: entry["data"]["metrics"]["metrics/student.json"]["data"]["max_f"] for rev, entry in rows.items()}
    epochs = {rev: entry["data"]["params"]["params.yaml"]["data"]["distill_student"]["epochs"]
              for rev, entry in rows.items()}
    head_rev = _run(["git", "rev-parse", "HEAD"], repo).strip()
    assert values == {"workspace": pytest.approx(now["max_f"]), head_rev: pytest.approx(head["max_f"])}
    assert epochs == {"workspace": 2, head_rev: 1}

    plots = json.loads(_run([DVC, "plots", "diff", "HEAD", "--json"], repo))
    (curve,) = plots["data"]["f_vs_threshold"]
    assert set(curve["revisions"]) == {"HEAD", "workspace"}
    drawn = {(row["rev"], row["filename"]) for row in curve["content"]["data"]["values"]}
    assert {("HEAD", "f_student.csv"), ("workspace", "f_student.csv"), ("HEAD", "f_baseline_laplacian.csv")} <= drawn


def test_repro_finds_the_cli_without_path_and_an_experiment_shows_up(history):
    """`dvc exp run` with no virtual environment on PATH; the experiment joins `dvc exp show`."""
    repo = history["repo"]
    assert shutil.which("dbdgan", path=_env()["PATH"]) is None
    out = _run([DVC, "exp", "run", "-S", "evaluate.grid_samples=1", "-n", "fewer-samples"], repo)
    assert _ran(out) == ["evaluate", "register"]
    shown = json.loads(_run([DVC, "exp", "show", "--json"], repo))
    names = [exp.get("name") for entry in shown for exp in (entry.get("experiments") or [])]
    assert "fewer-samples" in names


def _wait_for_queue(repo: Path, name: str, timeout_s: float = 900) -> str:
    """The status `dvc queue status` ends with for the task `name` (Success or Failed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = [line.split() for line in _run([DVC, "queue", "status"], repo).splitlines()]
        status = next((row[-1] for row in rows if name in row), "")
        if status in ("Success", "Failed"):
            return status
        time.sleep(5)
    raise AssertionError(f"queued experiment {name} did not finish in {timeout_s} s")


def test_a_queued_experiment_runs_in_a_copy_and_shows_its_metrics(history):
    """`dvc exp run --queue`, then `dvc queue start`: the stages run in a temporary copy under .dvc/tmp/exps
    that holds only what git tracks (no .venv, no MLflow store); they still find both in this repository."""
    from mlflow import MlflowClient

    repo, tracked = history["repo"], history["tracked"]
    assert ".venv" not in tracked and not [t for t in tracked if t.startswith("mlflow/mlflow.db")]
    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow/mlflow.db")
    before = len(client.search_model_versions("name='dbd-student'"))
    _run([DVC, "exp", "run", "--queue", "-n", "queued-weights", "-S", "distill_student.epochs=1",
          "-S", "distill_student.w_consistency=0.25"], repo)
    # DVC starts its queue worker as `dvc` from PATH: give it dvc alone, so that the stages still find the CLI
    # and its Python only through inputs.yaml's launcher
    only_dvc = repo.parent / "only-dvc"
    only_dvc.mkdir()
    (only_dvc / "dvc").symlink_to(BIN / "dvc")
    _run([DVC, "queue", "start"], repo, {**_env(), "PATH": f"{only_dvc}{os.pathsep}{_env()['PATH']}"})
    status = _wait_for_queue(repo, "queued-weights")
    assert status == "Success", _run([DVC, "queue", "logs", "queued-weights"], repo)[-4000:]

    shown = json.loads(_run([DVC, "exp", "show", "--json"], repo))
    (exp,) = [exp for entry in shown for exp in (entry.get("experiments") or []) if exp.get("name") == "queued-weights"]
    data = exp["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["distill_student"]["w_consistency"] == 0.25
    student = data["metrics"]["metrics/student.json"]["data"]
    assert 0.0 <= student["max_f"] <= 1.0 and 0.0 <= student["mae"] <= 1.0
    # registered in this repository's store, from a training run that logged the queued params
    versions = client.search_model_versions("name='dbd-student'")
    assert len(versions) == before + 1
    newest = max(versions, key=lambda v: int(v.version))
    assert client.get_run(newest.run_id).data.params["distill_student.w_consistency"] == "0.25"


def test_dvc_push_and_pull_round_trip_the_pipeline_outputs(history, s3_server):
    """The committed remote config, its bucket moved to a moto server by `--local` config and env only."""
    repo = history["repo"]
    bucket = f"dvc-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    _run([DVC, "remote", "modify", "--local", "storage", "url", f"s3://{bucket}/store"], repo)
    env = _env()
    assert "AWS_ENDPOINT_URL" in env and "AWS_SECRET_ACCESS_KEY" in env  # from the s3_server fixture
    assert "secret" not in (repo / ".dvc" / "config").read_text().lower().replace("aws_secret_access_key", "")
    before = _hashes(repo)
    empty = [name for name in CACHED if not any(key == name or key.startswith(f"{name}/") for key in before)]
    assert empty == [], f"cached outputs with no files to push: {empty}"
    _run([DVC, "push"], repo, env)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(
        Bucket=bucket, Prefix="store/").get("Contents", [])]
    assert len(keys) >= len(before), keys

    shutil.rmtree(repo / ".dvc" / "cache")
    for name in CACHED:
        path = repo / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    _run([DVC, "pull"], repo, env)
    assert _hashes(repo) == before
    # the pulled outputs are the pipeline's: only register reruns (always: a store may lack the versions)
    assert _ran(_run([DVC, "repro"], repo, env)) == ["register"]


def test_a_fresh_clone_reproduces_the_committed_run_and_stays_clean(history, tmp_path):
    """Issue 26: the promise of DVC. A clone of the committed first run, `make run` there: the data hash,
    models, metrics and plots equal the committed ones (timings live in git-ignored metrics/efficiency)."""
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(history["repo"]), str(clone)], tmp_path)
    (clone / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    _run(["make", "-s", "-o", ".venv/.installed", "run"], clone)
    assert _run(["git", "status", "--porcelain"], clone) == "", _run(["git", "diff"], clone)
    timed = json.loads((clone / "metrics" / "efficiency" / "student.json").read_text())
    assert timed["efficiency"]["latency_ms_b1"] > 0
    shown = _run([DVC, "metrics", "show"], clone)
    assert max(len(line) for line in shown.splitlines()) <= 120, shown
