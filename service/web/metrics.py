"""HTTP request metrics (prometheus_client default registry, served by GET /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
HTTP_IN_FLIGHT = Gauge("http_requests_in_flight", "HTTP requests being handled now.")
CLIENT_GONE = Counter(
    "http_requests_abandoned_total",
    "Requests whose client went away before the answer; their work was cancelled.",
)
