"""What the dispatcher knows about each worker: load, health, breaker and recent latency.

Example:
    >>> from llms.config import WorkerConfig
    >>> config = WorkerConfig(url="http://a:1/v1", models=["m"])
    >>> w = WorkerState(config, order=0, breaker_threshold=3, breaker_reset_s=5)
    >>> w.serves("m"), w.has_slot()
    (True, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from llms.breaker import BreakerState, CircuitBreaker
from llms.config import WorkerConfig

__all__ = ["WorkerSnapshot", "WorkerState"]


class WorkerSnapshot(BaseModel):
    """A read-only view of one worker for APIs (it is the response schema), benchmarks and tests."""

    model_config = ConfigDict(frozen=True)

    name: str
    url: str
    models: list[str]
    healthy: bool
    breaker: BreakerState
    in_flight: int
    max_concurrency: int
    weight: float
    requests: int
    failures: int
    latency_ewma_ms: float | None


def _peak_ewma(current: float | None, sample: float, weight: float) -> float:
    if current is None or sample > current:
        return sample
    return current * weight + sample * (1.0 - weight)


class WorkerState:
    """Mutable per-worker state; only touched from the dispatcher's event loop, so it needs no locks."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        order: int,
        breaker_threshold: int,
        breaker_reset_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock  # the dispatcher's clock, so latency decay and the breaker share its notion of time
        self.order = order
        self.models: frozenset[str] = frozenset(config.models)
        self.healthy = True  # optimistic until the first check; a refused connection takes it out at once
        self.failed_checks = 0
        self.breaker = CircuitBreaker(breaker_threshold, breaker_reset_s, clock=clock)
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.latency_ewma_s: float | None = None  # whole requests: shown, and used for Retry-After
        self.token_time_ewma_s: float | None = None  # per output token: the balancer's speed signal
        self._latency_at = 0.0
        self.removed = False

    @property
    def name(self) -> str:
        return self.config.name

    def serves(self, model: str) -> bool:
        return model in self.models

    def is_up(self, now: float | None = None) -> bool:
        """Healthy and not cut off by its breaker (an open breaker past its reset time counts: it may probe)."""
        return self.healthy and not self.removed and self.breaker.allows(now)

    def has_slot(self, now: float | None = None) -> bool:
        return self.in_flight < self.config.max_concurrency and self.is_up(now)

    def observe_latency(self, seconds: float, decay_s: float, now: float | None = None, *, tokens: int = 1) -> None:
        """Peak-sensitive EWMAs (as in Finagle's peak-EWMA balancer): a slow answer counts at once, recovery decays.

        The balancer's signal is time per output token, so a worker that happened to write long
        explanations does not look slower than one that answered short ranker calls.
        """
        now = self._clock() if now is None else now
        w = math.exp(-(now - self._latency_at) / decay_s)
        self.latency_ewma_s = _peak_ewma(self.latency_ewma_s, seconds, w)
        self.token_time_ewma_s = _peak_ewma(self.token_time_ewma_s, seconds / max(1, tokens), w)
        self._latency_at = now

    def snapshot(self) -> WorkerSnapshot:
        return WorkerSnapshot(
            name=self.name,
            url=self.config.url,
            models=sorted(self.models),
            healthy=self.healthy,
            breaker=self.breaker.state,
            in_flight=self.in_flight,
            max_concurrency=self.config.max_concurrency,
            weight=self.config.weight,
            requests=self.requests,
            failures=self.failures,
            latency_ewma_ms=None if self.latency_ewma_s is None else self.latency_ewma_s * 1000.0,
        )
