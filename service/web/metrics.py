"""HTTP request metrics (prometheus_client default registry, served by GET /metrics), and
the registry /metrics serves."""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

# prometheus-client's multiprocess mode: set (by the supervisor of several workers, or by
# the operator) before prometheus_client is imported, each process writes its values there.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def exposition_registry() -> CollectorRegistry:
    """What /metrics serves: this process's registry; in multiprocess mode every live
    worker's values, combined as each metric says (counters and histograms summed, gauges
    by their ``multiprocess_mode``)."""
    if not os.environ.get(MULTIPROCESS_DIR):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by method, route template, status and HTTP version.",
    ["method", "route", "status", "http_version"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from request start to the end of the response body, by method and route template.",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_IN_FLIGHT = Gauge(
    "http_requests_in_flight", "HTTP requests being handled now.", multiprocess_mode="livesum"
)
CLIENT_GONE = Counter(
    "http_requests_abandoned_total",
    "Requests whose client went away before the answer; their work was cancelled.",
)
