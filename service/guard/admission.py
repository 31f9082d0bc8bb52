"""Admission to the guard: a bounded queue, and a fair share per caller.

At most ``GUARD_CONCURRENCY`` guard calls run at once; up to ``GUARD_QUEUE`` more may wait
for a slot. A screen that would need a new call past that is refused at once (503 with
Retry-After) rather than left to time out, so memory and waiting stay bounded whatever the
traffic. One caller (its API token's name, or its client address when auth is off) may hold
at most ``GUARD_CALLER_SHARE`` of those running-or-waiting places, so one busy client cannot
starve the others. A screen that joins a call already in flight for the same conversation
takes no place.

The caller is read from :data:`caller`, a context variable the HTTP layer sets per request.
"""

from __future__ import annotations

import math
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass

# Who is asking: set per request by the HTTP layer (service.web.middleware); empty outside
# a request (warm-up, the command line), which is one caller like any other.
caller: ContextVar[str] = ContextVar("guard_caller", default="")
# Set while an admitted request screens its model's answer. Its output screen starts while
# its input screen still holds a place, so refusing it for a full queue would waste a
# request already under way: a follow-up may take a place past GUARD_QUEUE (at most twice
# the capacity in all, so memory stays bounded), and does not count against the caller.
follow_up: ContextVar[bool] = ContextVar("guard_follow_up", default=False)


@dataclass(frozen=True)
class Refusal:
    reason: str  # for the log and the caller's detail


class Admission:
    """Counts the guard calls each caller has running or waiting."""

    def __init__(self, concurrency: int, queue: int, caller_share: float) -> None:
        self.capacity = concurrency + queue
        self.per_caller = max(1, math.ceil(caller_share * self.capacity))
        self._held: Counter[str] = Counter()
        self._total = 0  # places held by first screens
        self._follow_ups = 0  # places held by follow-ups (at most ``capacity`` more)

    @property
    def held(self) -> int:
        return self._total + self._follow_ups

    def enter(self, who: str, follow_up: bool = False) -> Refusal | None:
        """Take a place for ``who``, or say why not (then nothing was taken). Follow-ups
        have places of their own, so they never crowd out a new request's first screen."""
        if follow_up:
            if self._follow_ups >= self.capacity:
                return Refusal(
                    f"the guard queue is full ({self._follow_ups} follow-up calls waiting)"
                )
            self._follow_ups += 1
            return None
        if self._total >= self.capacity:
            return Refusal(f"the guard queue is full ({self.capacity} calls running or waiting)")
        if self._held[who] >= self.per_caller:
            return Refusal(
                f"this caller already has {self.per_caller} guard calls running or waiting"
            )
        self._held[who] += 1
        self._total += 1
        return None

    def leave(self, who: str, follow_up: bool = False) -> None:
        if follow_up:
            self._follow_ups -= 1
            return
        self._held[who] -= 1
        if self._held[who] <= 0:
            del self._held[who]
        self._total -= 1
