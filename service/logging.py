"""Structured logging: one JSON object per line, stamped with the current request's id.

The request id lives in a context variable set by the request middleware; tasks and worker
threads started while handling the request inherit it, so every line a request causes (the
guard's, the pipeline's, the access line) carries the same ``request_id``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar, Token
from typing import IO, Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def get_request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return request_id_var.get()


def set_request_id(request_id: str | None) -> Token[str | None]:
    return request_id_var.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    request_id_var.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats a record as a single-line JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class _JsonHandler(logging.StreamHandler):
    """The handler configure_logging installs (so a second call can replace it)."""


def configure_logging(level: str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's records, as JSON lines, to ``stream`` (stderr by default).

    Replaces a handler installed by an earlier call, so calling it again (e.g. in a worker
    process) does not duplicate lines. Hypercorn's error logger propagates here; its access
    log is off because the request middleware writes a richer access line itself.
    """
    handler = _JsonHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _JsonHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party request logs would repeat what the access line says, per guard call.
    for noisy in ("httpx", "httpcore", "hpack", "h2"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler
