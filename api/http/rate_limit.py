"""Per-key rate limits: one token bucket per caller, so one key's flood cannot starve the others.

A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a request takes one, and
a request that finds less than one is refused with the seconds until one is there (the
``Retry-After``). A small class on an injected clock rather than a library: ``limits`` offers
fixed and sliding windows (no token bucket) on the wall clock, ``aiolimiter`` waits instead of
refusing; neither is installed, and tests need to move time themselves.

A refused request may also be **held** before its 429 (``hold_s``, at most its ``Retry-After``,
at most ``max_held`` of one caller at a time): a client that retries in a tight loop, the usual
flood, then retries at the limit's pace instead of spinning the server's CPU on refusals that
every other key pays for. Requests held wait before the in-flight count, so they take no slot.
Holds are jittered (``hold_jitter``: each lasts between ``1 - hold_jitter`` and 1 times its
length): a flood's connections are all refused together, so equal holds would send their
retries back together, once a second, and the bucket, full again by then, would admit a burst
of them at once, exactly when another key's request may arrive. Spread out, the flood's
admitted requests arrive one by one at the key's rate (full-jitter backoff, on the server side).

Buckets live in the process: with several worker processes each has its own (the limit is
then per key and process).

Example:
    >>> now = [0.0]
    >>> limiter = RateLimiter(rate_per_s=1.0, burst=2, clock=lambda: now[0])
    >>> [limiter.check("a"), limiter.check("a"), limiter.check("a")]
    [0.0, 0.0, 1.0]
    >>> limiter.check("b")  # another key has its own bucket
    0.0
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from api.settings import ApiSettings

__all__ = ["RateLimiter", "TokenBucket"]


class TokenBucket:
    """``burst`` requests at once, then ``rate_per_s`` sustained.

    Example:
        >>> bucket = TokenBucket(rate_per_s=2.0, burst=1, now=0.0)
        >>> bucket.take(0.0), bucket.take(0.0), bucket.take(0.5)
        (0.0, 0.5, 0.0)
    """

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(
                f"a token bucket needs a positive rate and a burst of at least 1, not {rate_per_s}, {burst}"
            )
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        """Take a token at ``now``: 0.0 when there was one, else the seconds until there will be (nothing taken)."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


@dataclass
class _Caller:
    bucket: TokenBucket
    refused: int = 0  # refusals not yet logged
    logged_at: float | None = None
    held: int = 0  # refused requests waiting for their 429 now


class RateLimiter:
    """One :class:`TokenBucket` per caller id, the least recently used dropped past ``max_callers``.

    A flood must not flood the logs too: :meth:`refusals_to_log` hands out a caller's refusals at
    most once every ``log_every_s`` (the first at once), for one log line instead of one a request.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = 4096,
        log_every_s: float = 10.0,
        hold_s: float = 0.0,
        max_held: int = 64,
        hold_jitter: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs a positive rate and a burst of at least 1, not {rate_per_s}, {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_callers = max_callers
        self.log_every_s = log_every_s
        self.hold_s = hold_s
        self.max_held = max_held
        if not 0.0 <= hold_jitter <= 1.0:
            raise ValueError(f"hold_jitter is a share of the hold, between 0 and 1, not {hold_jitter}")
        self.hold_jitter = hold_jitter
        self._rng = rng or random.Random()  # injectable: tests fix the jitter
        self._sleep = sleep  # injectable: tests see the holds without waiting for them
        self._clock = clock  # injectable: tests refill buckets by moving time, not by sleeping
        self._callers: OrderedDict[str, _Caller] = OrderedDict()

    def __len__(self) -> int:
        """How many callers have a bucket now."""
        return len(self._callers)

    @classmethod
    def from_settings(cls, api: ApiSettings, *, clock: Callable[[], float] = time.monotonic) -> RateLimiter | None:
        """The configured limiter, or ``None`` when ``rate_per_s`` is 0 or unset (no limit)."""
        if not api.rate_per_s:
            return None
        return cls(api.rate_per_s, api.burst, clock=clock, hold_s=api.rate_limit_hold_s)

    def check(self, caller: str) -> float:
        """Count one request of ``caller``: 0.0 when it may go ahead, else the seconds until it may."""
        now = self._clock()
        state = self._callers.get(caller)
        if state is None:
            state = self._callers[caller] = _Caller(TokenBucket(self.rate_per_s, self.burst, now))
            # Callers are keys (a bounded set), but rotated-out keys would linger: drop the idlest. A dropped
            # bucket comes back full, so only a caller idle the longest can gain, and at most one burst.
            while len(self._callers) > self.max_callers:
                self._callers.popitem(last=False)
        else:
            self._callers.move_to_end(caller)
        wait_s = state.bucket.take(now)
        if wait_s > 0:
            state.refused += 1
        return wait_s

    async def hold(self, caller: str, retry_after_s: float) -> bool:
        """Keep a refused request of ``caller`` for ``min(hold_s, retry_after_s)``, jittered; False when not held.

        Not held: holds are off, or ``max_held`` of the caller's requests are waiting already (a flood on
        many connections is then refused at once, as without holds).
        """
        seconds = min(self.hold_s, retry_after_s)
        state = self._callers.get(caller)
        if seconds <= 0 or state is None or state.held >= self.max_held:
            return False
        state.held += 1
        try:
            await self._sleep(seconds * (1.0 - self.hold_jitter * self._rng.random()))
        finally:
            state.held -= 1
        return True

    def refusals_to_log(self, caller: str) -> int:
        """``caller``'s refusals since its last log line when another line is due (0: none, or not yet)."""
        state = self._callers.get(caller)
        if state is None or not state.refused:
            return 0
        now = self._clock()
        if state.logged_at is not None and now - state.logged_at < self.log_every_s:
            return 0
        refused, state.refused, state.logged_at = state.refused, 0, now
        return refused
