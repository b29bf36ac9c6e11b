"""Prometheus metrics of the LLM dispatcher, in a registry of its own (the API serves it beside its own).

Example:
    >>> m = DispatcherMetrics(); m.requests.labels("w1", "ok").inc(); b"tandem_llm_requests_total" in m.render()
    True
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["DispatcherMetrics"]

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class DispatcherMetrics:
    """Queue depth and wait, per-worker in-flight / traffic / errors / health, time to first token, latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_depth = Gauge("tandem_llm_queue_depth", "Requests waiting for a worker.", ["priority"], registry=r)
        self.queue_wait = Histogram(
            "tandem_llm_queue_wait_seconds", "Time from admission to a worker slot.", ["priority"],
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "tandem_llm_rejected", "Requests refused or given up before a worker answered.", ["reason"], registry=r
        )
        self.in_flight = Gauge("tandem_llm_worker_in_flight", "Requests in flight per worker.", ["worker"], registry=r)
        self.requests = Counter(
            "tandem_llm_requests", "Requests sent per worker and outcome (share of traffic).", ["worker", "outcome"],
            registry=r,
        )  # fmt: skip
        self.errors = Counter("tandem_llm_errors", "Worker errors by kind.", ["worker", "kind"], registry=r)
        self.retries = Counter("tandem_llm_retries", "Attempts retried on another worker.", ["worker"], registry=r)
        self.ttft = Histogram(
            "tandem_llm_time_to_first_token_seconds", "Dispatch to first streamed chunk.", ["worker"],
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "tandem_llm_request_seconds", "Dispatch to last byte, per worker.", ["worker"], buckets=_SECONDS, registry=r
        )
        self.healthy = Gauge("tandem_llm_worker_healthy", "1 when the worker passes its health check.", ["worker"],
                             registry=r)  # fmt: skip
        self.breaker = Gauge(
            "tandem_llm_worker_breaker_state", "Per-worker circuit breaker: 0 closed, 1 half-open, 2 open.",
            ["worker"], registry=r,
        )  # fmt: skip
        self.malformed_tool_calls = Counter(
            "tandem_llm_malformed_tool_calls", "Responses whose tool calls did not parse.", ["worker"], registry=r
        )

    def forget_worker(self, name: str) -> None:
        """Drop a removed worker's series so dashboards do not show it forever."""
        for metric in (self.in_flight, self.ttft, self.latency, self.healthy, self.breaker, self.malformed_tool_calls,
                       self.retries):  # fmt: skip
            with contextlib.suppress(KeyError):
                metric.remove(name)

    def render(self) -> bytes:
        return generate_latest(self.registry)
