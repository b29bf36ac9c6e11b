"""Prometheus metrics of the HTTP service, in a registry of its own (one per app, so tests do not collide).

Example:
    >>> m = ApiMetrics(); m.requests.labels("/healthz", "GET", "200").inc(); b"tandem_http_requests_total" in m.render()
    True
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from retrieval.batching import BatchStats

__all__ = ["CONTENT_TYPE", "ApiMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """Request counts and latencies by route and status, stage timings, in-flight, batch sizes, breaker state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tandem_http_requests", "HTTP requests answered.", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "tandem_http_request_duration_seconds",
            "HTTP request latency, end to end inside the service.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("tandem_http_in_flight", "Requests being served now.", registry=r)
        self.rejected = Counter("tandem_http_rejected", "Requests refused before any work.", ["reason"], registry=r)
        self.stage = Histogram(
            "tandem_stage_duration_seconds",
            "Time per pipeline stage of a recommendation (fetch, encode, search, total).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tandem_encoder_batch_size",
            "Queries per encoder batch (dynamic micro-batching).",
            buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64),
            registry=r,
        )
        self.batch_wait = Histogram(
            "tandem_encoder_batch_wait_seconds",
            "Time the oldest query of a batch waited before the batch ran.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.breaker = Gauge(
            "tandem_circuit_breaker_state",
            "Image-storage circuit breakers: 0 closed, 1 half-open, 2 open.",
            ["circuit"],
            registry=r,
        )

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_wait.observe(stats.wait_ms / 1000)

    def set_breaker(self, circuit: str, state: str) -> None:
        self.breaker.labels(circuit).set({"closed": 0, "half-opened": 1, "opened": 2}.get(state, 2))

    def render(self) -> bytes:
        return generate_latest(self.registry)
