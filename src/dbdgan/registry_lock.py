"""A mutex held in the MLflow registry itself, so decisions on one registered model never interleave.

The lock is a transient registered model `<name><suffix>`, whose creation is atomic in every MLflow backend:
two registrations racing each compare against the champion the other left. Its holder keeps a heartbeat on
it; a crashed holder's lock is broken by one waiter once the heartbeat stops.
"""

from __future__ import annotations

import getpass
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".promotion-lock"
REGISTER_LOCK_SUFFIX = ".register-lock"
LOCK_TIMEOUT_S = 120.0
LOCK_STALE_S = 30.0  # a lock whose heartbeat (every LOCK_STALE_S / 4) stopped this long ago is broken
_ALREADY_EXISTS = {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}


def mlflow_client(client: Any = None) -> Any:
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

    client = mlflow_client(client)
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
