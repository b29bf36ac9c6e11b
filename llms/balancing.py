"""Balancing policies: pick one worker among those that serve the model and have a free slot.

- round-robin: next in a fixed order; blind to load, the baseline.
- least outstanding requests: fewest in flight per unit of weight; ties broken at random,
  because "first of the least busy" is what sent 93.7 % of traffic to one backend elsewhere.
- power of two choices: sample two (by weight), keep the one with the lower
  (in flight + 1) × recent time per token / weight, so slow workers are shunned without herding.
- affinity: consistent hashing of the request's routing key (its session, else its prompt's
  prefix) on a ring of virtual nodes, so a conversation returns to the worker whose prefix
  cache holds it; power of two choices when there is no key or that worker would exceed its
  bounded load (a hot key must not pile up on one worker).

Example:
    >>> import random
    >>> policy = make_policy(BalancingPolicy.LEAST_OUTSTANDING, random.Random(0))
    >>> type(policy).__name__
    'LeastOutstanding'
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from llms.config import BalancingPolicy
from llms.workers import WorkerState

__all__ = [
    "Affinity",
    "HashRing",
    "LeastOutstanding",
    "Policy",
    "PowerOfTwo",
    "RoundRobin",
    "make_policy",
    "routing_key",
]


class Policy(Protocol):
    """Chooses one of ``candidates`` (never empty); ``key`` is the request's routing key, which most policies ignore."""

    def choose(self, candidates: Sequence[WorkerState], key: str | None = None) -> WorkerState: ...


class RoundRobin:
    """Next worker after the last one chosen, in the order workers were added."""

    def __init__(self) -> None:
        self._last = -1

    def choose(self, candidates: Sequence[WorkerState], key: str | None = None) -> WorkerState:
        after = [w for w in candidates if w.order > self._last]
        chosen = min(after or candidates, key=lambda w: w.order)
        self._last = chosen.order
        return chosen


class LeastOutstanding:
    """Fewest requests in flight per unit of weight, ties at random."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[WorkerState], key: str | None = None) -> WorkerState:
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

    def choose(self, candidates: Sequence[WorkerState], key: str | None = None) -> WorkerState:
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


def _point(text: str) -> int:
    """A position on the ring: a stable 64-bit hash (Python's ``hash`` differs from process to process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing: each name owns ``vnodes`` points on a 64-bit ring; a key goes to the next point clockwise.

    Adding or removing a name moves only the keys whose next point was (or becomes) one of its points.

    Example:
        >>> ring = HashRing(["a", "b", "c"])
        >>> ring.lookup("session-42") == ring.lookup("session-42")
        True
        >>> HashRing(["a", "b"]).lookup("k", allowed=lambda n: n == "b")
        'b'
    """

    def __init__(self, names: Sequence[str] = (), *, vnodes: int = 64) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        self.vnodes = vnodes
        self._points: list[int] = []
        self._owners: list[str] = []
        self.names: set[str] = set()
        for name in names:
            self.add(name)

    def add(self, name: str) -> None:
        if name in self.names:
            return
        self.names.add(name)
        for i in range(self.vnodes):
            point = _point(f"{name}#{i}")
            at = bisect.bisect_left(self._points, point)
            self._points.insert(at, point)
            self._owners.insert(at, name)

    def walk(self, key: str) -> Iterator[str]:
        """Every name once, in the order the key meets them going clockwise from its hash."""
        start = bisect.bisect_right(self._points, _point(key))
        seen: set[str] = set()
        n = len(self._owners)
        for i in range(n):
            name = self._owners[(start + i) % n]
            if name not in seen:
                seen.add(name)
                yield name
                if len(seen) == len(self.names):
                    return

    def lookup(self, key: str, allowed: Callable[[str], bool] | None = None) -> str | None:
        """The first name clockwise from ``key`` that ``allowed(name)`` accepts (any name without ``allowed``)."""
        return next((n for n in self.walk(key) if allowed is None or allowed(n)), None)


class Affinity:
    """Sticky routing by key on a :class:`HashRing`, power of two choices without a key or when the home is loaded.

    The ring holds every worker this policy has seen; a key's *home* is the first worker clockwise
    that is up (healthy, breaker closed, not removed) and is either a candidate or merely full, so a
    dead or removed worker's keys move to their ring successors and nobody else's keys move. The
    home is taken when it is a candidate within its bounded load (consistent hashing with bounded
    loads, Mirrokni et al. 2018): with this request, its in-flight count may not pass
    ⌈``load_factor`` × (requests in flight on the candidates + 1) × its share of their weight⌉.
    Otherwise (home full, over its bound, or excluded for a retry) :class:`PowerOfTwo` decides.

    Example:
        >>> import random
        >>> policy = Affinity(random.Random(0))
        >>> policy.load_factor
        1.25
    """

    def __init__(self, rng: random.Random, *, vnodes: int = 64, load_factor: float = 1.25) -> None:
        if load_factor < 1:
            raise ValueError("load_factor must be >= 1")
        self.load_factor = load_factor
        self.ring = HashRing(vnodes=vnodes)
        self.fallback = PowerOfTwo(rng)
        self._known: dict[str, WorkerState] = {}
        self.sticky = 0  # requests sent to their key's home
        self.spilled = 0  # requests with a key sent elsewhere (home full, overloaded or excluded)

    def within_bound(self, home: WorkerState, candidates: Sequence[WorkerState]) -> bool:
        """Whether one more request keeps ``home`` within its bounded load among ``candidates``."""
        total = sum(w.in_flight for w in candidates) + 1
        share = home.config.weight / sum(w.config.weight for w in candidates)
        return home.in_flight + 1 <= math.ceil(self.load_factor * total * share)

    def home(self, key: str, candidates: Sequence[WorkerState]) -> WorkerState | None:
        """The key's home worker now (see the class), or ``None`` when no worker qualifies."""
        names = {w.name for w in candidates}
        for w in candidates:
            self._known[w.name] = w
            self.ring.add(w.name)

        def member(name: str) -> bool:
            w = self._known[name]
            return name in names or (w.is_up() and not w.removed and not w.has_slot())

        name = self.ring.lookup(key, member)
        return None if name is None else self._known[name]

    def choose(self, candidates: Sequence[WorkerState], key: str | None = None) -> WorkerState:
        if key is None:
            return self.fallback.choose(candidates)
        home = self.home(key, candidates)
        if home is not None and home in candidates:
            if self.within_bound(home, candidates):
                self.sticky += 1
                return home
            candidates = [w for w in candidates if w is not home] or candidates  # not past its bound by a fluke
        self.spilled += 1
        return self.fallback.choose(candidates)


def routing_key(payload: Mapping[str, Any], prefix_chars: int = 2048) -> str:
    """The request's routing key: OpenAI's ``user`` field (a session id), else a hash of its prompt's prefix.

    The prefix runs to the end of the first user message (system prompt included), so every turn
    of one conversation shares it while different conversations behind one system prompt do not.
    """
    user = payload.get("user")
    if isinstance(user, str) and user:
        return f"user:{user}"
    messages = payload.get("messages")
    prefix: list[Any] = []
    for message in messages if isinstance(messages, list) else []:
        prefix.append(message)
        if isinstance(message, Mapping) and message.get("role") == "user":
            break
    text = json.dumps(prefix, sort_keys=True, default=str)[:prefix_chars]
    return "prefix:" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def make_policy(policy: BalancingPolicy, rng: random.Random | None = None) -> Policy:
    rng = rng or random.Random()
    if policy is BalancingPolicy.ROUND_ROBIN:
        return RoundRobin()
    if policy is BalancingPolicy.LEAST_OUTSTANDING:
        return LeastOutstanding(rng)
    if policy is BalancingPolicy.AFFINITY:
        return Affinity(rng)
    return PowerOfTwo(rng)
