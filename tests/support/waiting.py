"""Waiting for a condition in async tests without asserting how long it took.

:func:`settle` lets other tasks run for a bounded number of event-loop turns, no real time;
:func:`eventually` polls while real background work (a health loop, a child process) runs,
under a guard far above what the work needs, so that a hang fails instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["eventually", "settle"]


async def settle(condition: Callable[[], bool], *, turns: int = 1000) -> None:
    """Let the other tasks run until ``condition`` holds; fails (rather than spins) if it never does."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"still false after {turns} turns of the event loop")


async def eventually(condition: Callable[[], bool], *, guard_s: float = 10.0, poll_s: float = 0.01) -> None:
    """Poll ``condition`` until it holds; ``guard_s`` is a hang guard, not a measurement."""
    async with asyncio.timeout(guard_s):
        while not condition():
            await asyncio.sleep(poll_s)
