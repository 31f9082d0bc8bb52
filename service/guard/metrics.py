"""Prometheus metrics of the guard (default registry, exposed by the app's GET /metrics)."""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Histogram

# One per screen: stage is input|output; outcome is safe|blocked|allowed_unsafe|error|skipped
# (allowed_unsafe: unsafe, but no code in GUARD_BLOCK_CATEGORIES).
GUARD_CALLS = Counter(
    "guard_calls_total",
    "Guard screens by stage and outcome.",
    ["stage", "outcome"],
)
# Wall time of screens that called Ollama (retries included), successful or not.
GUARD_LATENCY = Histogram(
    "guard_latency_seconds",
    "Latency of guard calls to Ollama, retries included.",
    ["stage"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
# source is cache (a stored verdict) or inflight (joined an identical call in progress).
GUARD_CACHE_HITS = Counter(
    "guard_cache_hits_total",
    "Screens answered without a guard call of their own.",
    ["source"],
)
GUARD_CATEGORIES = Counter(
    "guard_verdict_categories_total",
    "Hazard categories named in unsafe verdicts.",
    ["code", "blocked"],
)
GUARD_ERRORS = Counter(
    "guard_errors_total",
    "Screens that failed closed, by error kind.",
    ["kind"],
)
GUARD_RETRIES = Counter(
    "guard_retries_total",
    "Guard calls retried after a connection-type failure, by error kind.",
    ["kind"],
)
GUARD_ABANDONED = Counter(
    "guard_calls_abandoned_total",
    "Guard calls cancelled because every caller waiting for their verdict went away.",
)


# The children of the per-screen counters, looked up once per label set (``labels()`` builds
# a tuple and takes a lock on every call; a 32-text request counts 64 screens).
@functools.cache
def screen_counter(stage: str, outcome: str) -> Any:
    return GUARD_CALLS.labels(stage, outcome)


@functools.cache
def cache_hit_counter(source: str) -> Any:
    return GUARD_CACHE_HITS.labels(source)
