"""A per-worker circuit breaker the router can *inspect*.

Written here rather than taken from purgatory (used by the API's image fetcher): routing
must ask "may this worker take a request now?" without calling it, and a half-open
breaker must let exactly one probe through, not every request that arrives.

Example:
    >>> b = CircuitBreaker(threshold=2, reset_s=30.0)
    >>> b.record_failure(now=0.0); b.record_failure(now=0.0); b.state
    'open'
    >>> b.allows(now=1.0), b.allows(now=31.0)
    (False, True)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Closed → (threshold failures in a row) → open → (reset_s) → one probe → closed or open again."""

    def __init__(self, threshold: int, reset_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.reset_s = reset_s
        self._clock = clock  # injectable so tests can move past reset_s without sleeping
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self._probing else "open"

    def allows(self, now: float | None = None) -> bool:
        """Whether a request may be sent now (does not take the probe; see :meth:`on_dispatch`)."""
        if self.opened_at is None:
            return True
        if self._probing:
            return False
        now = self._clock() if now is None else now
        return now - self.opened_at >= self.reset_s

    def on_dispatch(self) -> None:
        """A request was sent; if the breaker is open past its reset time this request is the probe."""
        if self.opened_at is not None:
            self._probing = True

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._probing = False

    def record_failure(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        self.failures += 1
        if self._probing or self.failures >= self.threshold:
            self.opened_at = now
            self._probing = False

    def release_probe(self) -> None:
        """The probe ended without a verdict (the caller went away): let the next request probe."""
        self._probing = False

    def reset(self) -> None:
        self.record_success()
