"""Aliases in the MLflow registry: the automatic gate's promotion, promotion by hand, rollback, and their records.

Aliases: `challenger` (newest registration), `champion` (the version to serve), `previous-champion` (where a
rollback goes). The registered model's `champion_history` tag lists champions in order, so repeated
rollbacks walk back through them. Every decision is written on the version it concerns: a `decision` tag
(the latest, JSON) and a `decision.<UTC time>` tag per decision (never overwritten), each saying who, when,
why and which metrics were compared. Each operation holds the model's registry lock (dbdgan.registry_lock);
the verdict itself is dbdgan.gate's.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from dbdgan.config import GateParams
from dbdgan.gate import evaluate_gate, tag_metrics
from dbdgan.registry_lock import current_user, mlflow_client, registry_lock

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS = "previous-champion"
HISTORY_TAG = "champion_history"
DECISION_TAG = "decision"
# `dbdgan register` creates versions tagged incomplete and marks them complete once every write succeeded;
# the gate and `promote` refuse an incomplete version (versions without the tag predate it: complete).
REGISTRATION_TAG = "registration"
INCOMPLETE, COMPLETE = "incomplete", "complete"
_HISTORY_MAX = 200


def _aliases(client: Any, name: str) -> dict[str, int]:
    return {alias: int(v) for alias, v in client.get_registered_model(name).aliases.items()}


def champion_history(name: str, client: Any = None) -> list[int]:
    """Versions that were champion, oldest first (the registered model's `champion_history` tag)."""
    raw = mlflow_client(client).get_registered_model(name).tags.get(HISTORY_TAG)
    return [int(v) for v in json.loads(raw)] if raw else []


def _version_tags(client: Any, name: str, version: int) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_model_version(name, str(version)).tags)
    except MlflowException as exc:
        raise ValueError(f"registered model {name!r} has no version {version}: {exc.message}") from exc


def _require_complete(name: str, version: int, tags: dict[str, str]) -> None:
    if tags.get(REGISTRATION_TAG) == INCOMPLETE:
        raise ValueError(f"{name} version {version} is an incomplete registration (a `dbdgan register` failed "
                         "part-way): rerun the register step, which completes or replaces it")


def record_decision(name: str, version: int, record: dict[str, Any], client: Any = None) -> dict[str, Any]:
    """Write the decision on the version: `decision` (latest) and `decision.<UTC time>` (history)."""
    client = mlflow_client(client)
    now = datetime.now(UTC)
    record = {"time": now.isoformat(timespec="seconds"), "host": socket.gethostname(), **record}
    text = json.dumps(record, sort_keys=True, default=str)
    if len(text) > 5000:  # MLflow's tag value limit: keep the verdict, shorten the free text
        record["reason"] = str(record.get("reason", ""))[:500]
        record.pop("checks", None)
        text = json.dumps(record, sort_keys=True, default=str)
    client.set_model_version_tag(name, str(version), DECISION_TAG, text)
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    client.set_model_version_tag(name, str(version), f"{DECISION_TAG}.{stamp}", text)
    return record


def _make_champion(client: Any, name: str, version: int, current: int | None) -> None:
    """Move `champion` to `version`, remember the one it replaced, extend the history."""
    history = champion_history(name, client)
    if current is not None and (not history or history[-1] != current):
        history.append(current)  # champion set by something else: keep it reachable by rollback
    history.append(version)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(current))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-_HISTORY_MAX:]))


def _metrics_compared(client: Any, name: str, **versions: int | None) -> dict[str, Any]:
    """The compared metrics of each named version, e.g. candidate=7, champion=5."""
    return {label: {"version": v, **tag_metrics(_version_tags(client, name, v))}
            for label, v in versions.items() if v is not None}


def run_gate(name: str, version: int, gate: GateParams | None = None, *, user: str | None = None,
             client: Any = None) -> dict[str, Any]:
    """The automatic gate for a newly registered version; promotes it when it passes (and auto_promote)."""
    client = mlflow_client(client)
    gate = gate or GateParams()
    version = int(version)
    with registry_lock(name, client):
        champion = _aliases(client, name).get(CHAMPION)
        tags = _version_tags(client, name, version)
        _require_complete(name, version, tags)
        if champion == version:
            return {"version": version, "result": "unchanged", "reason": "already champion",
                    "champion_before": champion, "champion_after": champion}
        champion_tags = None if champion is None else _version_tags(client, name, champion)
        result = evaluate_gate(tags, champion_tags, gate)
        promote_now = result.passed and gate.auto_promote
        if promote_now:
            _make_champion(client, name, version, champion)
        outcome = "promoted" if promote_now else ("passed" if result.passed else "rejected")
        reason = ("gate passed" if result.passed else "gate failed: " + "; ".join(result.failures)) + (
            "" if promote_now or not result.passed else " (auto_promote is off)")
        record = record_decision(name, version, {
            "action": "gate", "result": outcome, "user": current_user(user), "reason": reason,
            "mode": result.mode, "champion_before": champion,
            "champion_after": version if promote_now else champion,
            "checks": [asdict(c) for c in result.checks],
            "metrics": _metrics_compared(client, name, candidate=version, champion=champion),
            "gate": gate.model_dump()}, client)
        if promote_now and champion is not None:
            record_decision(name, champion, {"action": "gate", "result": "replaced",
                                             "user": current_user(user), "champion_after": version,
                                             "reason": f"version {version} passed the gate"}, client)
    log.info("%s v%d: %s (%s)", name, version, outcome, reason)
    return {"version": version, **record}


class GateRefused(ValueError):
    """A manual promotion of a version that fails the gate, without `force`."""


def promote(name: str, version: int, reason: str, user: str | None = None, *, client: Any = None,
            gate: GateParams | None = None, force: bool = False) -> dict[str, Any]:
    """Make `version` champion by hand. A version that fails the gate needs `force` (the CLI's --force): the
    refusal says which checks failed; a forced promotion records the verdict beside the reason."""
    if not reason or not reason.strip():
        raise ValueError("a manual promotion needs a reason (--reason)")
    client = mlflow_client(client)
    version = int(version)
    with registry_lock(name, client):
        tags = _version_tags(client, name, version)
        _require_complete(name, version, tags)
        champion = _aliases(client, name).get(CHAMPION)
        if champion == version:
            raise ValueError(f"{name} version {version} is already the champion")
        champion_tags = None if champion is None else _version_tags(client, name, champion)
        verdict = evaluate_gate(tags, champion_tags, gate or GateParams())
        if not verdict.passed and not force:
            raise GateRefused(f"{name} version {version} fails the promotion gate ({'; '.join(verdict.failures)}); "
                              "promote it anyway with --force (the verdict is recorded beside your reason)")
        _make_champion(client, name, version, champion)
        who = current_user(user)
        record = record_decision(name, version, {
            "action": "manual-promote", "result": "promoted", "user": who, "reason": reason.strip(),
            "champion_before": champion, "champion_after": version, "gate_would_pass": verdict.passed,
            "forced": not verdict.passed,
            "checks": [asdict(c) for c in verdict.checks],
            "metrics": _metrics_compared(client, name, candidate=version, champion=champion)}, client)
        if champion is not None:
            record_decision(name, champion, {"action": "manual-promote", "result": "replaced", "user": who,
                                             "reason": reason.strip(), "champion_after": version}, client)
        client.set_model_version_tag(name, str(version), "promoted_by", who)
    return {"version": version, **record}


def _exists(client: Any, name: str, version: int) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        return False
    return True


def rollback(name: str, reason: str = "rollback", user: str | None = None, *,
             client: Any = None) -> dict[str, Any]:
    """Restore the champion before the current one (skipping deleted versions); record it on both."""
    client = mlflow_client(client)
    with registry_lock(name, client):
        current = _aliases(client, name).get(CHAMPION)
        if current is None:
            raise ValueError(f"{name} has no champion to roll back")
        history = champion_history(name, client)
        while history and history[-1] == current:
            history.pop()
        while history and not _exists(client, name, history[-1]):
            history.pop()
        if not history:
            raise ValueError(f"{name} has no earlier champion to restore (champion_history: "
                             f"{champion_history(name, client)})")
        target = history[-1]
        client.set_registered_model_alias(name, CHAMPION, str(target))
        earlier = [v for v in history[:-1] if v != target and _exists(client, name, v)]
        if earlier:
            client.set_registered_model_alias(name, PREVIOUS, str(earlier[-1]))
        elif PREVIOUS in _aliases(client, name):
            client.delete_registered_model_alias(name, PREVIOUS)
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-_HISTORY_MAX:]))
        who = current_user(user)
        record = record_decision(name, target, {
            "action": "rollback", "result": "restored", "user": who, "reason": reason,
            "champion_before": current, "champion_after": target,
            "metrics": _metrics_compared(client, name, restored=target, rolled_back=current)}, client)
        record_decision(name, current, {"action": "rollback", "result": "rolled-back", "user": who,
                                        "reason": reason, "champion_after": target}, client)
    return {"version": target, **record}
