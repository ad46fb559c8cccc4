"""One redaction rule for every URI that is logged, stored (MLflow params, reports) or compiled (pipeline YAML).

The credentials in `scheme://user:password@host` are replaced by `***` (the user name too: for S3 and MinIO it
is often an access key id). Credentials belong in the environment (MLFLOW_TRACKING_PASSWORD, AWS_*).
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
# scheme://user:password@ : the password runs up to the last '@' before the host part
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s:/@'\"]*:[^\s/'\"]*@")


def redact(text: str) -> str:
    """`text` (a URI, a message, a log line) with every `user:password@` replaced by `***@`."""
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
