"""The promotion gate, manual promotion, rollback and racing registrations, against a real MLflow store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from pipeline_fixtures import tiny_params
from test_registry import make_workspace

from dbdgan.aliases import CHAMPION, PREVIOUS, GateRefused, champion_history, promote, rollback, run_gate
from dbdgan.config import GateParams
from dbdgan.gate import evaluate_gate, gate_params
from dbdgan.registry_lock import LOCK_SUFFIX, registry_lock
from dbdgan.tracking import Tracking, configure

NAME = "dbd-student"
GATE = GateParams(max_f_margin=0.01, mae_margin=0.005, max_params=1_000_000, max_latency_ms=50.0,
                  min_max_f=0.5, max_mae=0.3)
TESTS = Path(__file__).resolve().parent


def tags(max_f: float = 0.8, mae: float = 0.1, params: float = 100_000, latency: float = 10.0,
         manifest: str = "m1", protocol: str = '{"split": "test"}') -> dict[str, str]:
    return {"metric.max_f": str(max_f), "metric.mae": str(mae), "metric.efficiency.params": str(params),
            "metric.efficiency.latency_ms_b1": str(latency), "dataset_manifest_sha256": manifest,
            "eval_protocol": protocol}


# --- the decision itself (pure) ---------------------------------------------------------------------------

def test_gate_passes_within_margins_and_budget():
    result = evaluate_gate(tags(max_f=0.795, mae=0.104), tags(max_f=0.8, mae=0.1), GATE)
    assert result.passed and result.mode == "compare", result.failures


@pytest.mark.parametrize(("challenger", "needle"), [
    (tags(max_f=0.78), "below by more than margin"),
    (tags(mae=0.11), "worse by more than margin"),
    (tags(params=2_000_000), "budget 1e+06"),
    (tags(latency=80.0), "latency_ms_b1 80 ms > budget 50"),
    (tags(manifest="m2"), "different evaluation set"),
    (tags(protocol='{"split": "val"}'), "different evaluation set"),
])
def test_gate_fails_on_margin_budget_or_different_evaluation_set(challenger, needle):
    result = evaluate_gate(challenger, tags(), GATE)
    assert not result.passed
    assert any(needle in failure for failure in result.failures), result.failures


def test_without_champion_absolute_floors_apply():
    assert evaluate_gate(tags(max_f=0.55, mae=0.25), None, GATE).passed
    low = evaluate_gate(tags(max_f=0.45), None, GATE)
    assert not low.passed and low.mode == "floors" and "floor 0.5" in low.failures[0]
    assert not evaluate_gate(tags(mae=0.31), None, GATE).passed
    assert not evaluate_gate(tags(params=5e6), None, GATE).passed  # the budget binds a first champion too
    unbounded = GATE.model_copy(update={"max_params": None, "max_latency_ms": None})
    assert evaluate_gate(tags(params=5e6, latency=1e4), None, unbounded).passed
    missing = evaluate_gate({"metric.max_f": "0.9"}, None, GATE)
    assert not missing.passed and "no mae" in missing.failures[0]


def test_gate_params_come_from_register_section_or_defaults():
    params = tiny_params()
    assert gate_params(params.register) == (getattr(params.register, "gate", None) or GateParams())

    class Register:
        gate = {"max_f_margin": 0.2}

    assert gate_params(Register()).max_f_margin == 0.2
    Register.gate = {"no_such_knob": 1}
    with pytest.raises(ValueError, match="no_such_knob"):
        gate_params(Register())


# --- against a real store ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """A migrated, empty sqlite store, copied per test: creating one costs seconds, copying it nothing."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_registered_models()
    return path


@pytest.fixture
def client(tmp_path, monkeypatch, empty_store):
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    client.create_registered_model(NAME)
    return client


def add_version(client: MlflowClient, **metric_tags) -> int:
    source = "file://" + client.tracking_uri.removeprefix("sqlite:///") + ".model"
    version = client.create_model_version(NAME, source=source, tags=tags(**metric_tags))
    return int(version.version)


def champion(client: MlflowClient) -> int | None:
    aliases = client.get_registered_model(NAME).aliases
    return int(aliases[CHAMPION]) if CHAMPION in aliases else None


def decision(client: MlflowClient, version: int) -> dict:
    return json.loads(client.get_model_version(NAME, str(version)).tags["decision"])


def test_gate_promotes_then_rejects_and_records_every_decision(client):
    v1 = add_version(client, max_f=0.8)
    first = run_gate(NAME, v1, GATE, user="ci")
    assert first["result"] == "promoted" and champion(client) == v1
    v2 = add_version(client, max_f=0.7)
    second = run_gate(NAME, v2, GATE, user="ci")
    assert second["result"] == "rejected" and champion(client) == v1
    record = decision(client, v2)
    assert record["user"] == "ci" and record["time"] and "below by more than margin" in record["reason"]
    assert record["metrics"]["candidate"]["max_f"] == 0.7 and record["metrics"]["champion"]["version"] == v1
    v3 = add_version(client, max_f=0.81, params=5e6)
    assert run_gate(NAME, v3, GATE)["result"] == "rejected"
    assert "budget" in decision(client, v3)["reason"]
    v4 = add_version(client, max_f=0.82)
    assert run_gate(NAME, v4, GATE)["result"] == "promoted"
    assert champion(client) == v4 and int(client.get_registered_model(NAME).aliases[PREVIOUS]) == v1
    assert decision(client, v1)["result"] == "replaced"
    assert champion_history(NAME, client) == [v1, v4]
    off = add_version(client, max_f=0.83)
    assert run_gate(NAME, off, GATE.model_copy(update={"auto_promote": False}))["result"] == "passed"
    assert champion(client) == v4


def test_manual_promote_and_rollback(client):
    v1, v2, v3 = (add_version(client, max_f=f) for f in (0.8, 0.6, 0.85))
    run_gate(NAME, v1, GATE)
    with pytest.raises(ValueError, match="reason"):
        promote(NAME, v2, reason="  ")
    with pytest.raises(ValueError, match="no version 99"):
        promote(NAME, 99, reason="typo")
    # v2 (max-F 0.6) fails the gate against v1: refused, saying why, unless forced
    with pytest.raises(GateRefused, match=rf"{NAME} version {v2} fails the promotion gate \(max_f 0.6000 vs "
                                          r"champion 0.8000: below by more than margin .*\); promote it anyway "
                                          r"with --force"):
        promote(NAME, v2, reason="field tests on phones", user="alice")
    assert champion(client) == v1
    done = promote(NAME, v2, reason="field tests on phones", user="alice", force=True)
    assert champion(client) == v2 and done["gate_would_pass"] is False and done["forced"] is True
    record = decision(client, v2)
    assert record["action"] == "manual-promote" and record["user"] == "alice"
    assert record["reason"] == "field tests on phones" and record["champion_before"] == v1
    assert client.get_model_version(NAME, str(v2)).tags["promoted_by"] == "alice"
    with pytest.raises(ValueError, match="already the champion"):
        promote(NAME, v2, reason="again")
    promote(NAME, v3, reason="better", user="bob")
    assert champion_history(NAME, client) == [v1, v2, v3]

    back = rollback(NAME, reason="regression in prod", user="carol")
    assert back["version"] == v2 and champion(client) == v2
    assert int(client.get_registered_model(NAME).aliases[PREVIOUS]) == v1
    assert decision(client, v2)["action"] == "rollback" and decision(client, v3)["result"] == "rolled-back"
    assert rollback(NAME, user="carol")["version"] == v1 and champion(client) == v1
    assert PREVIOUS not in client.get_registered_model(NAME).aliases
    with pytest.raises(ValueError, match="no earlier champion"):
        rollback(NAME)
    history = [k for k in client.get_model_version(NAME, str(v2)).tags if k.startswith("decision.")]
    assert len(history) == 4  # promoted, replaced, restored, rolled back: each kept


def test_rollback_skips_deleted_versions_and_needs_a_champion(client):
    with pytest.raises(ValueError, match="no champion"):
        rollback(NAME)
    v1, v2, v3 = (add_version(client) for _ in range(3))
    for v in (v1, v2, v3):
        promote(NAME, v, reason="step")
    client.delete_model_version(NAME, str(v2))
    assert rollback(NAME)["version"] == v1


def test_lock_is_exclusive_and_stale_locks_are_broken(client):
    with (registry_lock(NAME, client), pytest.raises(TimeoutError, match="still held"),
          registry_lock(NAME, client, timeout_s=0.3)):
        pass
    client.create_registered_model(NAME + LOCK_SUFFIX)  # a holder that died
    time.sleep(0.05)
    with registry_lock(NAME, client, stale_s=0.01):
        pass
    names = [m.name for m in client.search_registered_models()]
    assert NAME + LOCK_SUFFIX not in names


RACER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from pipeline_fixtures import tiny_params
from dbdgan.registration import register_models
from dbdgan.tracking import ModelNames, Tracking

root, go = Path(sys.argv[1]), Path(sys.argv[2])
params = tiny_params()
student = {{"student": root / "models/student.pt"}}
(root / "ready").touch()
while not go.exists():
    time.sleep(0.01)
result = register_models(params, student, ModelNames(), root / "metrics", root / "data/prepared/manifest.csv",
                         Tracking())  # the store comes from MLFLOW_TRACKING_URI
print(result["student"]["version"], result["student"]["gate"]["result"])
"""


def test_racing_registrations_both_become_versions_and_one_champion(tmp_path, monkeypatch, empty_store):
    """Two processes register at once: both versions exist, and the gate decisions are serialised, so the
    better model ends as champion whichever process gates first (the worse one compares against it)."""
    (tmp_path / "shared").mkdir()
    shutil.copy(empty_store, tmp_path / "shared/mlflow.db")
    store = f"sqlite:///{tmp_path}/shared/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    configure(Tracking(artifact_location=f"{tmp_path}/shared/artifacts"), tiny_params().register.service_timeout_s)
    script = tmp_path / "racer.py"
    script.write_text(RACER.format(tests=str(TESTS)))
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "MLFLOW_TRACKING_URI": store}
    runners = {}
    for label, max_f, mae in (("good", 0.85, 0.10), ("worse", 0.70, 0.20)):
        root = tmp_path / label
        make_workspace(root, {"max_f": max_f, "mae": mae})
        runners[label] = (root, subprocess.Popen(
            [sys.executable, str(script), str(root), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    deadline = time.monotonic() + 90
    while not all((root / "ready").exists() for root, _ in runners.values()):
        assert time.monotonic() < deadline and all(p.poll() is None for _, p in runners.values()), \
            [p.communicate()[1][-2000:] for _, p in runners.values() if p.poll() is not None]
        time.sleep(0.05)
    go.touch()
    versions = {}
    for label, (_, proc) in runners.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        versions[label] = int(out.split()[-2])
    client = MlflowClient(store)
    assert sorted(versions.values()) == [1, 2]
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'")) == [1, 2]
    assert int(client.get_registered_model(NAME).aliases[CHAMPION]) == versions["good"]
    assert champion_history(NAME, client)[-1] == versions["good"]
    for v in versions.values():
        assert decision(client, v)["action"] == "gate"
    assert NAME + LOCK_SUFFIX not in [m.name for m in client.search_registered_models()]


def test_cli_promote_refuses_a_gate_failing_version_without_force_and_prints_one_line(client, capsys):
    """Issue 26: the only sign used to be `"gate_would_pass": false` inside 60 lines of JSON."""
    from dbdgan.cli import main

    v1, v2 = add_version(client, max_f=0.8), add_version(client, max_f=0.6)
    promote(NAME, v1, reason="first")
    command = ["promote", "--model", NAME, "--version", str(v2), "--reason", "phones",
               "--params", str(TESTS.parent / "params.yaml")]
    assert main(command) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fails the promotion gate (max_f 0.6000 vs champion 0.8000" in err[0]
    assert err[0].endswith("promote it anyway with --force (the verdict is recorded beside your reason)")
    assert champion(client) == v1
    assert main([*command, "--force"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{NAME} version {v2} is champion (manual-promote; before: version {v1}); forced past the gate: "
                   f"max_f 0.6000 vs champion 0.8000: below by more than margin "
                   f"{gate_params(tiny_params().register).max_f_margin:g}"]
    assert main(["promote", "--model", NAME, "--rollback", "--json", "--params", command[-1]]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["version"] == v1 and record["action"] == "rollback"
