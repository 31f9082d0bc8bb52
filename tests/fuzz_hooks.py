"""Schemathesis checks of our own, loaded by ``tests/fuzz.py`` (``SCHEMATHESIS_HOOKS``).

``not_a_server_error`` sees HTTP statuses only, but JSON-RPC answers every error in an HTTP
200, and an event stream that has started can only end with an ``error`` event: an internal
error there (JSON-RPC ``-32603``, HTTP+JSON ``INTERNAL`` / 500 in an event) is a server error
all the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import schemathesis

INTERNAL_CODES = {-32603, 500}


def _payloads(text: str, content_type: str) -> Iterator[Any]:
    if content_type.startswith("text/event-stream"):
        for line in text.splitlines():
            if line.startswith("data:"):
                try:
                    yield json.loads(line[5:])
                except ValueError:
                    continue
        return
    if "json" in content_type:
        try:
            yield json.loads(text)
        except ValueError:
            return


def internal_error(text: str, content_type: str) -> str | None:
    """The message of an internal error in a JSON body or an event stream, else None."""
    for payload in _payloads(text, content_type):
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            continue
        if error.get("code") in INTERNAL_CODES or error.get("status") == "INTERNAL":
            return str(error.get("message", ""))
    return None


@schemathesis.check
def no_internal_error_in_the_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """No JSON-RPC -32603 and no INTERNAL error event, whatever the HTTP status."""
    content_type = response.headers.get("content-type", [""])
    if isinstance(content_type, list):
        content_type = content_type[0] if content_type else ""
    message = internal_error(response.text or "", content_type)
    if message is not None:
        raise AssertionError(f"an internal error in a {response.status_code}: {message[:300]}")
    return None
