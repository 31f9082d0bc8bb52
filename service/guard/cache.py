"""A small LRU cache with a time-to-live for guard verdicts.

Only successful verdicts go in; errors are never cached, so an outage is retried on the next
request. Keys hash the exact conversation, roles included, together with the model name.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from service.guard.scanner import Message, ScanResult


def conversation_key(model: str, messages: Sequence[Message], scope: str = "") -> str:
    """SHA-256 of the model and the role-tagged conversation (and ``scope``, the caller
    whose verdicts these are, when verdicts are kept per caller). Each string is written with
    its length in front (``5:hello``), so no text can pass for a boundary: unambiguous, and
    a third of the cost of a JSON encoding (a 32-text request makes 64 keys)."""
    parts = [f"{len(model)}:{model}"]
    if scope:
        parts.append(f"{len(scope)}:{scope}")
    for message in messages:
        parts.append(f"{len(message.role)}:{message.role}{len(message.content)}:{message.content}")
    return hashlib.sha256("".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


class VerdictCache:
    """LRU with TTL. ``size`` 0 disables it; ``ttl`` 0 means entries never expire."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, ScanResult]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> ScanResult | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, verdict = entry
        if self.ttl and self._clock() - stored_at >= self.ttl:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return verdict

    def put(self, key: str, verdict: ScanResult) -> None:
        if not self.enabled:
            return
        self._entries[key] = (self._clock(), verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
