"""`dbdgan results --compare REV|EXP`: two runs side by side, from a real git repository and a real DVC
experiment (`dvc exp save`); and the footer names the tracking store actually used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dbdgan.evaluation.scores import write_scores

BIN = Path(sys.executable).parent
GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
          "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1"}


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **GIT_ID,
            "GIT_CONFIG_GLOBAL": str(cwd / ".gitconfig-test"), "DVC_NO_ANALYTICS": "1", **env}
    return subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


def _scores(repo: Path, student_max_f: float) -> None:
    for name, max_f in (("teacher", 0.85), ("student", student_max_f)):
        write_scores(repo / "metrics", name, {"max_f": max_f, "infocus_max_f": max_f - 0.1, "mae": 0.2,
                                              "n_images": 4, "settings": {"split": "test"},
                                              "efficiency": {"params": 1000, "latency_ms_b1": 3.0}})


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    _run(["git", "init", "-q"], root).check_returncode()
    _run([str(BIN / "dvc"), "init", "-q"], root).check_returncode()
    (root / "dvc.yaml").write_text("stages: {}\nmetrics:\n- metrics/student.json\n- metrics/teacher.json\n")
    (root / ".gitignore").write_text("/metrics/efficiency/\n.gitconfig-test\n")
    _scores(root, 0.70)
    _run(["git", "add", "-A"], root).check_returncode()
    _run(["git", "commit", "-qm", "first run"], root).check_returncode()
    _scores(root, 0.75)
    _run([str(BIN / "dvc"), "exp", "save", "-n", "better"], root).check_returncode()
    _scores(root, 0.80)  # the workspace: a third run
    return root


def _row(text: str, model: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.split()[:1] == [model])


@pytest.mark.parametrize(("rev", "then", "change"), [("HEAD", "0.700", "+0.100"), ("better", "0.750", "+0.050")])
def test_compare_sets_a_commit_or_an_experiment_beside_this_run(repo, rev, then, change):
    proc = _run([sys.executable, "-m", "dbdgan.cli", "results", "--compare", rev], repo)
    assert proc.returncode == 0, proc.stderr
    compared = proc.stdout[proc.stdout.index("Now ("):]
    assert f"then ({rev}, commit" in compared
    student = _row(compared, "student")
    in_focus_then = f"{float(then) - 0.1:.3f}"  # the fixture's in-focus max-F is its max-F - 0.1
    assert student[1:7] == ["0.700", in_focus_then, change, "0.800", then, change]
    assert _row(compared, "teacher")[4:7] == ["0.850", "0.850", "+0.000"]
    assert max(len(line) for line in compared.splitlines()) <= 120


def test_an_unknown_revision_is_one_line(repo):
    proc = _run([sys.executable, "-m", "dbdgan.cli", "results", "--compare", "no-such-run"], repo)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "--compare no-such-run: neither a git revision nor a DVC experiment is named so here (see `git log`, "
        "`dvc exp show`)")


def test_the_footer_names_the_store_in_use_without_its_credentials(repo):
    plain = _run([sys.executable, "-m", "dbdgan.cli", "results"], repo)
    assert "mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db," in plain.stdout
    served = _run([sys.executable, "-m", "dbdgan.cli", "results"], repo,
                  MLFLOW_TRACKING_URI="https://ml:s3cret@mlflow.example.com")
    assert "--backend-store-uri https://" in served.stdout and "mlflow.example.com" in served.stdout
    assert "s3cret" not in served.stdout and "<tracking URI>" not in served.stdout
