"""Balancing policies: pick one worker among those that serve the model and have a free slot.

- round-robin: next in a fixed order; blind to load, the baseline.
- least outstanding requests: fewest in flight per unit of weight; ties broken at random,
  because "first of the least busy" is what sent 93.7 % of traffic to one backend elsewhere.
- power of two choices: sample two (by weight), keep the one with the lower
  (in flight + 1) × recent time per token / weight, so slow workers are shunned without herding.

Example:
    >>> import random
    >>> policy = make_policy(BalancingPolicy.LEAST_OUTSTANDING, random.Random(0))
    >>> type(policy).__name__
    'LeastOutstanding'
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from llms.config import BalancingPolicy
from llms.workers import WorkerState

__all__ = ["LeastOutstanding", "Policy", "PowerOfTwo", "RoundRobin", "make_policy"]


class Policy(Protocol):
    """Chooses one of ``candidates`` (never empty)."""

    def choose(self, candidates: Sequence[WorkerState]) -> WorkerState: ...


class RoundRobin:
    """Next worker after the last one chosen, in the order workers were added."""

    def __init__(self) -> None:
        self._last = -1

    def choose(self, candidates: Sequence[WorkerState]) -> WorkerState:
        after = [w for w in candidates if w.order > self._last]
        chosen = min(after or candidates, key=lambda w: w.order)
        self._last = chosen.order
        return chosen


class LeastOutstanding:
    """Fewest requests in flight per unit of weight, ties at random."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[WorkerState]) -> WorkerState:
        best = min(w.in_flight / w.config.weight for w in candidates)
        tied = [w for w in candidates if w.in_flight / w.config.weight == best]
        return tied[0] if len(tied) == 1 else self._rng.choice(tied)


class PowerOfTwo:
    """Two random candidates (weighted), the one with the lower load × latency wins."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def _cost(self, worker: WorkerState, default_latency: float) -> float:
        latency = worker.token_time_ewma_s if worker.token_time_ewma_s is not None else default_latency
        return (worker.in_flight + 1) * latency / worker.config.weight

    def choose(self, candidates: Sequence[WorkerState]) -> WorkerState:
        if len(candidates) == 1:
            return candidates[0]
        weights = [w.config.weight for w in candidates]
        first = self._rng.choices(range(len(candidates)), weights=weights)[0]
        rest = [i for i in range(len(candidates)) if i != first]
        second = self._rng.choices(rest, weights=[weights[i] for i in rest])[0]
        a, b = candidates[first], candidates[second]
        # A worker with no latency yet is assumed as fast as the fastest known one, so it gets probed.
        known = [w.token_time_ewma_s for w in candidates if w.token_time_ewma_s is not None]
        default = min(known) if known else 1.0
        cost_a, cost_b = self._cost(a, default), self._cost(b, default)
        if cost_a == cost_b:
            return a if self._rng.random() < 0.5 else b
        return a if cost_a < cost_b else b


def make_policy(policy: BalancingPolicy, rng: random.Random | None = None) -> Policy:
    rng = rng or random.Random()
    if policy is BalancingPolicy.ROUND_ROBIN:
        return RoundRobin()
    if policy is BalancingPolicy.LEAST_OUTSTANDING:
        return LeastOutstanding(rng)
    return PowerOfTwo(rng)
