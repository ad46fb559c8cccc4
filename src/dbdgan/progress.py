"""Progress that suits where the output goes: a tqdm bar on a terminal, a few log lines in a log file.

A bar redrawn with carriage returns turns into hundreds of lines when stderr is a file (DVC, KFP, CI), so
off a terminal `progress()` draws nothing and instead logs "desc: n/total" at most every `log_every_s`
seconds (None: never; the caller logs its own line, as training does once per epoch) and once at the end.
`DBDGAN_PROGRESS=bar|log|off` overrides the choice.

    for batch in progress(loader, "evaluate teacher", unit="batch"):
        ...
    with progress(total=len(files), desc="predict", unit="img") as bar:
        bar.update(1)
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
MODES = ("bar", "log", "off")


def mode(stream: Any = None) -> str:
    """bar (stderr is a terminal), log (it is a file or pipe), or off; $DBDGAN_PROGRESS decides first."""
    forced = os.environ.get("DBDGAN_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


class LogProgress(Generic[T]):
    """tqdm's small API (iterate, update, set_postfix, close, with) that writes occasional log lines."""

    def __init__(self, iterable: Iterable[T] | None, desc: str, total: int | None, unit: str,
                 log_every_s: float | None) -> None:
        self.iterable, self.desc, self.unit, self.log_every_s = iterable, desc, unit, log_every_s
        self.total = total if total is not None else _length(iterable)
        self.n = 0
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._closed = False

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError(f"progress {self.desc!r} was made without an iterable")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> LogProgress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.log_every_s is not None and now - self._last >= self.log_every_s:
            self._last = now
            log.info("%s", self._line(now))

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        items = {**(values or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={value}" for key, value in items.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.log_every_s is not None and self.n:
            log.info("%s", self._line(time.monotonic()))

    def _line(self, now: float) -> str:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        rate = self.n / max(now - self._start, 1e-9)
        extra = f" ({self.postfix})" if self.postfix else ""
        return f"{self.desc}: {done} {self.unit} in {now - self._start:.0f} s, {rate:.2f} {self.unit}/s{extra}"


def _length(iterable: Iterable[Any] | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress(iterable: Iterable[T] | None = None, desc: str = "", *, total: int | None = None, unit: str = "it",
             enabled: bool = True, log_every_s: float | None = 30.0, leave: bool = False) -> Any:
    """A tqdm bar on a terminal, else a LogProgress (see the module doc); nothing at all when not `enabled`."""
    chosen = mode() if enabled else "off"
    if chosen == "bar":
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, dynamic_ncols=True)
    return LogProgress(iterable, desc, total, unit, None if chosen == "off" else log_every_s)
