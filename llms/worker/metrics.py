"""Prometheus metrics of one embedded worker (its own registry, served at its ``/metrics``).

Example:
    >>> m = WorkerMetrics(); m.requests.labels("base", "ok").inc(); b"tandem_worker_requests_total" in m.render(None)
    True
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llms.worker.engine import EngineStats

__all__ = ["WorkerMetrics"]

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    """Requests by model and outcome, latency, time to first token, in flight, tokens, batching."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("tandem_worker_requests", "Chat completions.", ["model", "outcome"], registry=r)
        self.latency = Histogram("tandem_worker_request_seconds", "Request latency.", buckets=_SECONDS, registry=r)
        self.ttft = Histogram("tandem_worker_time_to_first_token_seconds", "Time to first token.", buckets=_SECONDS,
                              registry=r)  # fmt: skip
        self.in_flight = Gauge("tandem_worker_in_flight", "Requests being generated.", registry=r)
        self.tokens = Counter("tandem_worker_completion_tokens", "Tokens generated.", registry=r)
        self.malformed_tool_calls = Counter(
            "tandem_worker_malformed_tool_calls", "Outputs whose <tool_call> block did not parse.", registry=r
        )
        self.mean_batch = Gauge("tandem_worker_mean_batch_size", "Mean rows per engine batch.", registry=r)
        self.max_batch = Gauge("tandem_worker_max_batch_size", "Largest engine batch so far.", registry=r)
        self.prompt_tokens = Gauge("tandem_worker_prompt_tokens", "Prompt tokens received so far.", registry=r)
        self.prefix_reused = Gauge(
            "tandem_worker_prefix_cache_reused_tokens", "Prompt tokens served from the prefix cache so far.", registry=r
        )
        self.prefix_hits = Gauge("tandem_worker_prefix_cache_hits", "Prompts that reused a cached prefix.", registry=r)

    def render(self, stats: EngineStats | None) -> bytes:
        if stats is not None:
            self.mean_batch.set(stats.mean_batch)
            self.max_batch.set(stats.max_batch)
            self.prompt_tokens.set(stats.prompt_tokens)
            self.prefix_reused.set(stats.prefix_tokens_reused)
            self.prefix_hits.set(stats.prefix_hits)
        return generate_latest(self.registry)
