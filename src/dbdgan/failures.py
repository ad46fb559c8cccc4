"""How a failed command reports itself: one clear, redacted line and a non-zero exit; the traceback with -v."""

from __future__ import annotations

import sys
import traceback

from dbdgan.redact import redact

# Errors whose message is written for the user (the library raises these with what to fix); any other
# exception is named by its type, since its message alone may not say what failed.
_USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


def describe(exc: BaseException) -> str:
    """The message of `exc` for a person: MLflow's own message without its wrapper, credentials masked."""
    message = getattr(exc, "message", None)  # MlflowException: the text without the JSON error envelope
    text = str(message if isinstance(message, str) and message else exc).strip()
    if not isinstance(exc, _USER_ERRORS):
        first = text.splitlines()[0] if text else ""
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return redact(" ".join(line.strip() for line in text.splitlines() if line.strip()))  # always one line


def report(prefix: str, exc: BaseException, verbose: bool) -> int:
    """Print the failure of `prefix` (e.g. "dbdgan register") to stderr; returns the exit code (1)."""
    if verbose:
        print(redact("".join(traceback.format_exception(exc))), end="", file=sys.stderr)
    print(f"{prefix}: error: {describe(exc)}", file=sys.stderr)
    return 1
