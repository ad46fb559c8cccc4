"""One redaction rule for every URI that is logged, stored (MLflow params, reports) or compiled (pipeline YAML).

Any userinfo in `scheme://userinfo@host` is replaced by `***`: `user:password`, and a lone user name or token
too (`http://TOKEN@host`, `s3://ACCESSKEY@bucket/...`: for S3 and MinIO the user part is often an access key id).
Credentials belong in the environment (MLFLOW_TRACKING_PASSWORD, AWS_*).
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
# scheme://userinfo@ : the userinfo runs up to the last '@' before the first '/' (a password may hold '@')
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/'\"]+@")


def redact(text: str) -> str:
    """`text` (a URI, a message, a log line) with every `userinfo@` replaced by `***@`."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)


def redact_tree(tree: Any) -> Any:
    """A copy of a nested dict/list with every string redacted (params before they are stored or compiled)."""
    if isinstance(tree, dict):
        return {key: redact_tree(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(redact_tree(value) for value in tree)
    return redact(tree) if isinstance(tree, str) else tree


class RedactingFormatter(logging.Formatter):
    """Log lines never show a URI password, whichever library formatted the message."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactingFilter(logging.Filter):
    """The same rule for handlers we do not format: MLflow's own loggers write through their own handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def mask_handlers(logger: logging.Logger) -> None:
    """Add a RedactingFilter to each handler of `logger` (once): libraries that set `propagate = False`."""
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
