"""Promotion in the MLflow registry: the automatic gate, promotion by hand, rollback, and their records.

Aliases: `challenger` (newest registration), `champion` (the version to serve), `previous-champion` (where a
rollback goes). The registered model's `champion_history` tag lists champions in order, so repeated
rollbacks walk back through them. Every decision is written on the version it concerns: a `decision` tag
(the latest, JSON) and a `decision.<UTC time>` tag per decision (never overwritten), each saying who, when,
why and which metrics were compared.

Decisions on one registered model are serialised by a mutex held in the registry itself (a transient
registered model `<name>.promotion-lock`, whose creation is atomic in every MLflow backend), so two
registrations racing each compare against the champion the other left, and `champion` ends on one version.
Its holder keeps a heartbeat on it; a crashed holder's lock is broken by one waiter once the heartbeat stops.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS = "previous-champion"
HISTORY_TAG = "champion_history"
DECISION_TAG = "decision"
METRIC_PREFIX = "metric."
MANIFEST_TAG = "dataset_manifest_sha256"
PROTOCOL_TAG = "eval_protocol"
MAX_F, MAE = "max_f", "mae"
PARAMS, LATENCY = "efficiency.params", "efficiency.latency_ms_b1"
COMPARED = (MAX_F, MAE, PARAMS, LATENCY)
LOCK_SUFFIX = ".promotion-lock"
REGISTER_LOCK_SUFFIX = ".register-lock"
# `dbdgan register` creates versions tagged incomplete and marks them complete once every write succeeded;
# the gate and `promote` refuse an incomplete version (versions without the tag predate it: complete).
REGISTRATION_TAG = "registration"
INCOMPLETE, COMPLETE = "incomplete", "complete"
LOCK_TIMEOUT_S = 120.0
LOCK_STALE_S = 30.0  # a lock whose heartbeat (every LOCK_STALE_S / 4) stopped this long ago is broken
_HISTORY_MAX = 200
_ALREADY_EXISTS = {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}


class GateParams(BaseModel):
    """The promotion gate (params.yaml `register.gate`). Latency is batch-1 CPU latency at
    evaluate.efficiency_size, as the evaluate step measured it; None switches a budget off."""

    model_config = ConfigDict(extra="forbid")

    auto_promote: bool = True
    max_f_margin: float = Field(0.01, ge=0.0, le=1.0)
    mae_margin: float = Field(0.005, ge=0.0, le=1.0)
    max_params: int | None = Field(25_000_000, gt=0)
    max_latency_ms: float | None = Field(2000.0, gt=0.0)
    min_max_f: float = Field(0.5, ge=0.0, le=1.0)
    max_mae: float = Field(0.35, ge=0.0, le=1.0)


def gate_params(register: Any) -> GateParams:
    """`register.gate` when the schema has it (a model or a mapping), the defaults otherwise."""
    raw = getattr(register, "gate", None)
    if raw is None:
        return GateParams()
    if isinstance(raw, GateParams):
        return raw
    data = raw.model_dump() if isinstance(raw, BaseModel) else dict(raw)
    try:
        return GateParams.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid register.gate params: {exc}") from None


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class GateResult:
    passed: bool
    mode: str  # "compare" against a champion, or "floors" when there is none
    checks: list[Check]

    @property
    def failures(self) -> list[str]:
        return [c.detail for c in self.checks if not c.passed]


def tag_metrics(tags: dict[str, str]) -> dict[str, float]:
    """The compared metrics from a version's `metric.*` tags; absent or unparsable ones are left out."""
    metrics = {}
    for key in COMPARED:
        try:
            metrics[key] = float(tags[METRIC_PREFIX + key])
        except (KeyError, ValueError):
            continue
    return metrics


def _budget_checks(metrics: dict[str, float], gate: GateParams) -> list[Check]:
    checks = []
    for key, limit, unit in ((PARAMS, gate.max_params, " parameters"), (LATENCY, gate.max_latency_ms, " ms")):
        if limit is None:
            continue
        if key not in metrics:
            checks.append(Check(key, False, f"{key} is not recorded: budget {limit:g}{unit} unmet"))
        else:
            ok = metrics[key] <= limit
            sign = "<=" if ok else ">"
            checks.append(Check(key, ok, f"{key} {metrics[key]:g}{unit} {sign} budget {limit:g}"))
    return checks


def evaluate_gate(challenger_tags: dict[str, str], champion_tags: dict[str, str] | None,
                  gate: GateParams) -> GateResult:
    """Pure decision from version tags: comparisons (same evaluation set only) or floors, plus the budget."""
    ours = tag_metrics(challenger_tags)
    checks: list[Check] = []
    missing = [k for k in (MAX_F, MAE) if k not in ours]
    if missing:
        checks.append(Check("metrics", False, f"challenger has no {', '.join(missing)} metric tags"))
    if champion_tags is None:
        mode = "floors"
        if not missing:
            ok = ours[MAX_F] >= gate.min_max_f
            sign = ">=" if ok else "<"
            checks.append(Check(MAX_F, ok, f"max_f {ours[MAX_F]:.4f} {sign} floor {gate.min_max_f:g}"))
            ok = ours[MAE] <= gate.max_mae
            sign = "<=" if ok else ">"
            checks.append(Check(MAE, ok, f"mae {ours[MAE]:.4f} {sign} ceiling {gate.max_mae:g}"))
    else:
        mode = "compare"
        theirs = tag_metrics(champion_tags)
        for tag in (MANIFEST_TAG, PROTOCOL_TAG):
            a, b = challenger_tags.get(tag), champion_tags.get(tag)
            ok = a is not None and a == b
            detail = (f"same {tag}" if ok else
                      f"different evaluation set: {tag} {a or 'unrecorded'} vs the champion's "
                      f"{b or 'unrecorded'}; the metrics are not comparable (promote by hand after checking)")
            checks.append(Check(tag, ok, detail))
        gone = [k for k in (MAX_F, MAE) if k not in theirs]
        if gone:
            checks.append(Check("champion_metrics", False, f"champion has no {', '.join(gone)} metric tags"))
        if not missing and not gone:
            floor = theirs[MAX_F] - gate.max_f_margin
            ok = ours[MAX_F] >= floor
            verdict = "within" if ok else "below by more than"
            checks.append(Check(MAX_F, ok, f"max_f {ours[MAX_F]:.4f} vs champion {theirs[MAX_F]:.4f}: "
                                           f"{verdict} margin {gate.max_f_margin:g}"))
            ceiling = theirs[MAE] + gate.mae_margin
            ok = ours[MAE] <= ceiling
            verdict = "within" if ok else "worse by more than"
            checks.append(Check(MAE, ok, f"mae {ours[MAE]:.4f} vs champion {theirs[MAE]:.4f}: "
                                         f"{verdict} margin {gate.mae_margin:g}"))
    checks += _budget_checks(ours, gate)
    return GateResult(all(c.passed for c in checks), mode, checks)


def _client(client: Any = None) -> Any:
    if client is not None:
        return client
    from mlflow import MlflowClient

    return MlflowClient()


def current_user(user: str | None = None) -> str:
    if user:
        return user
    try:
        return os.environ.get("DBDGAN_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", ""))


class LockHeldError(TimeoutError):
    """A registry lock stayed held by a live holder for longer than the caller would wait."""


@dataclass
class _Sighting:
    """A lock instance (its creation time) and its heartbeat as this waiter last saw them, and since when."""

    created: int
    heartbeat: str
    since: float


def _owner() -> str:
    return f"{current_user()}@{socket.gethostname()}:{os.getpid()}"


def _holder_dead(owner: str) -> bool:
    """The holder ran on this host and its process is gone (the only death we can see without waiting)."""
    host_pid = owner.rpartition("@")[2]
    host, _, pid = host_pid.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _heartbeat(client: Any, lock: str, stop: threading.Event, every_s: float) -> None:
    """Refresh the lock's heartbeat tag until `stop`, so waiters can tell a live holder from a dead one."""
    from mlflow.exceptions import MlflowException

    beat = 0
    while not stop.wait(every_s):
        beat += 1
        try:
            client.set_registered_model_tag(lock, "heartbeat", str(beat))
        except MlflowException as exc:  # the server is down or the lock was broken: the holder's calls will say
            log.debug("heartbeat of %s failed: %s", lock, exc)


def _break_stale(client: Any, lock: str, created: int, owner: str) -> None:
    """Delete lock instance `created`, claimed first by creating `<lock>.break-<created>` (atomic): of many
    waiters that find the same lock stale, one deletes it, and none deletes the lock taken after it."""
    from mlflow.exceptions import MlflowException

    claim = f"{lock}.break-{created}"
    try:
        client.create_registered_model(claim, tags={"owner": _owner()},
                                       description=f"claim to break the stale {lock}")
    except MlflowException as exc:
        if _error_code(exc) not in _ALREADY_EXISTS:
            raise
        try:  # another waiter is breaking it; if that waiter died on the way, its claim goes too
            if _holder_dead(client.get_registered_model(claim).tags.get("owner", "")):
                _delete_lock(client, claim)
        except MlflowException as exc2:
            if _error_code(exc2) != "RESOURCE_DOES_NOT_EXIST":
                raise
        return
    try:
        current = client.get_registered_model(lock)
        if current.creation_timestamp == created:
            log.warning("breaking stale lock %s of %s", lock, owner or "an unknown holder")
            _delete_lock(client, lock)
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
    finally:
        _delete_lock(client, claim)


@contextmanager
def registry_lock(name: str, client: Any = None, timeout_s: float = LOCK_TIMEOUT_S,
                  stale_s: float = LOCK_STALE_S, suffix: str = LOCK_SUFFIX) -> Iterator[None]:
    """Hold the mutex `<name><suffix>`, a registered model whose creation is atomic in every MLflow store.

    The holder refreshes a heartbeat tag every stale_s / 4. A lock is stale when its holder ran on this
    host and is gone, or when this waiter saw its heartbeat unchanged for `stale_s` (no clocks compared);
    a stale lock is broken by exactly one waiter. A live holder for longer than `timeout_s` is a
    LockHeldError naming it.
    """
    from mlflow.exceptions import MlflowException

    client = _client(client)
    lock = f"{name}{suffix}"
    deadline = time.monotonic() + timeout_s
    seen: _Sighting | None = None
    while True:
        try:
            client.create_registered_model(lock, tags={"owner": _owner(), "heartbeat": "0"},
                                           description=f"transient mutex of {name}; its holder refreshes "
                                                       "the heartbeat tag while it works")
            break
        except MlflowException as exc:
            if _error_code(exc) not in _ALREADY_EXISTS:
                raise
        try:
            held = client.get_registered_model(lock)
        except MlflowException:
            continue  # released between our two calls
        owner, beat, now = held.tags.get("owner", ""), held.tags.get("heartbeat", ""), time.monotonic()
        if seen is None or (seen.created, seen.heartbeat) != (held.creation_timestamp, beat):
            seen = _Sighting(held.creation_timestamp, beat, now)
        if _holder_dead(owner) or now - seen.since > stale_s:
            _break_stale(client, lock, held.creation_timestamp, owner)
            seen = None
            continue
        if now > deadline:
            since = datetime.fromtimestamp(held.creation_timestamp / 1000, UTC).isoformat(timespec="seconds")
            raise LockHeldError(f"registry lock {lock} still held by {owner or 'an unknown holder'} (taken "
                                f"{since}, heartbeat seen {now - seen.since:.0f} s ago); gave up after "
                                f"{timeout_s:g} s. A dead holder's lock is broken once its heartbeat has "
                                f"stopped for {stale_s:g} s")
        time.sleep(0.05 + random.random() * 0.15)
    stop = threading.Event()
    beater = threading.Thread(target=_heartbeat, args=(client, lock, stop, max(stale_s / 4, 0.01)),
                              name=f"heartbeat {lock}", daemon=True)
    beater.start()
    try:
        yield
    finally:
        stop.set()
        beater.join()
        _delete_lock(client, lock)


def _delete_lock(client: Any, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise


def _aliases(client: Any, name: str) -> dict[str, int]:
    return {alias: int(v) for alias, v in client.get_registered_model(name).aliases.items()}


def champion_history(name: str, client: Any = None) -> list[int]:
    """Versions that were champion, oldest first (the registered model's `champion_history` tag)."""
    raw = _client(client).get_registered_model(name).tags.get(HISTORY_TAG)
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
    client = _client(client)
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
    client = _client(client)
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
    client = _client(client)
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
    client = _client(client)
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
