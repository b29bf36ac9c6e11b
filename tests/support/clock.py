"""A clock a test owns: time moves only when the test advances it.

Code that takes ``clock: Callable[[], float] = time.monotonic`` gets one of these in tests, so
deadlines, TTLs and breaker resets are checked against instants the test chose, not against how
fast a shared machine happened to run.

Example:
    >>> clock = FakeClock()
    >>> clock.advance(2.5)
    >>> clock()
    2.5
"""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """A monotonic clock (seconds) that stands still until :meth:`advance`."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        # Going back would break every "monotonic" assumption of the code under test, so it is a test bug.
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        self.now += seconds
