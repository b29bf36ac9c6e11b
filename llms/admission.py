"""Admission for the dispatcher: request priorities, the bounded queue, and handing out worker slots.

:class:`Admission` owns the workers' slots. A request takes one on a worker with room at
once when nothing more urgent waits, else queues (one FIFO per :class:`Priority`) until a
slot frees or its deadline passes, and is refused at once while the queue is full for its
priority (batch work may fill only part of it). Routing among workers with room is the
balancing :class:`~llms.balancing.Policy`'s choice. Nothing here reads a clock of its own
or talks to a worker: :class:`~llms.dispatcher.Dispatcher` passes its clock in and makes
the calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import IntEnum

from llms.balancing import Policy
from llms.config import DispatcherConfig
from llms.errors import DeadlineExceededError, ModelNotFoundError, NoWorkerError, OverloadedError
from llms.health import publish
from llms.metrics import DispatcherMetrics
from llms.workers import WorkerState

__all__ = ["Admission", "Priority"]


class Priority(IntEnum):
    """Lower leaves the queue first."""

    INTERACTIVE = 0
    BATCH = 1


@dataclass(eq=False)
class _Waiter:
    """A request waiting for a slot; ``future`` receives the worker it may use."""

    model: str
    priority: Priority
    exclude: frozenset[str]
    future: asyncio.Future[WorkerState]
    enqueued_at: float  # on the dispatcher's clock, not read here: a default would bypass an injected one
    key: str | None = None  # the routing key the policy may use (session affinity)


class _WaitQueues:
    """Requests waiting for a slot, one FIFO per priority; each queue's depth goes to ``metrics`` as it changes."""

    def __init__(self, metrics: DispatcherMetrics) -> None:
        self._queues: dict[Priority, deque[_Waiter]] = {p: deque() for p in Priority}
        self._metrics = metrics
        self.count = 0  # waiters in all queues, including cancelled ones not yet swept out

    def ahead_of(self, priority: Priority) -> bool:
        """Whether a request of ``priority`` or a more urgent one is already waiting."""
        return any(self._queues[p] for p in Priority if p <= priority)

    def push(self, waiter: _Waiter) -> None:
        """Queue ``waiter``; a retry (it excludes workers) goes first, as it already waited its turn once."""
        queue = self._queues[waiter.priority]
        if waiter.exclude:
            queue.appendleft(waiter)
        else:
            queue.append(waiter)
        self.count += 1
        self._publish(waiter.priority)

    def remove(self, waiter: _Waiter) -> None:
        """Take ``waiter`` out of its queue, if it is still there."""
        with contextlib.suppress(ValueError):
            self._queues[waiter.priority].remove(waiter)
            self.count -= 1
            self._publish(waiter.priority)

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Empty every queue, failing each waiter still waiting with a fresh ``error()``."""
        for queue in self._queues.values():
            while queue:
                waiter = queue.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(error())
        self.count = 0

    def assign(self, pick: Callable[[_Waiter], WorkerState | None]) -> None:
        """Hand free slots to waiters, highest priority first, in arrival order within a priority.

        ``pick`` takes a slot for a waiter, or returns ``None`` when no worker has one for it;
        that waiter keeps its place and those behind it may still get one.
        """
        for priority in Priority:
            queue = self._queues[priority]
            if not queue:
                continue
            kept: deque[_Waiter] = deque()
            while queue:
                waiter = queue.popleft()
                if waiter.future.done():
                    self.count -= 1
                    continue
                worker = pick(waiter)
                if worker is None:
                    kept.append(waiter)
                    continue
                self.count -= 1
                waiter.future.set_result(worker)
            self._queues[priority] = kept
            self._publish(priority)

    def _publish(self, priority: Priority) -> None:
        self._metrics.queue_depth.labels(priority.name.lower()).set(len(self._queues[priority]))


def _queue_limit(config: DispatcherConfig, priority: Priority) -> int:
    """How many may wait before a request of ``priority`` is refused: batch work may fill only part of the queue."""
    limit = config.max_queue
    if priority is not Priority.INTERACTIVE:
        limit = int(limit * config.batch_queue_fraction)
    return limit


def _retry_after(workers: Collection[WorkerState], queued: int) -> float:
    """Seconds a refused client should wait: the queue ahead of it drained at the workers' recent pace."""
    capacity = sum(w.config.max_concurrency for w in workers if w.is_up()) or 1
    latencies = [w.latency_ewma_s for w in workers if w.latency_ewma_s is not None]
    service = sum(latencies) / len(latencies) if latencies else 1.0
    return float(max(1, math.ceil(service * (queued + 1) / capacity)))


async def _wait_for_slot(waiter: _Waiter, deadline: float, clock: Callable[[], float]) -> None:
    """Wait until ``waiter`` is given a worker or ``deadline`` passes on ``clock``, whichever comes first."""
    while not waiter.future.done():
        remaining = deadline - clock()
        if remaining <= 0:
            return
        # The clock, not the sleep, decides when the deadline has passed: a wake-up before it
        # (a fake clock not yet advanced, a timer firing early) just waits for the time still left.
        await asyncio.wait({waiter.future}, timeout=remaining)


class Admission:
    """The workers' slots and the requests queued for them; one event loop owns it, as it owns the dispatcher.

    ``workers`` is the dispatcher's table of workers: it adds and removes them there.
    """

    def __init__(
        self,
        config: DispatcherConfig,
        metrics: DispatcherMetrics,
        policy: Policy,
        *,
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._metrics = metrics
        self.workers: dict[str, WorkerState] = {}
        self._policy = policy
        self._clock = clock
        self._waiting = _WaitQueues(metrics)

    @property
    def queued(self) -> int:
        return self._waiting.count

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Fail every queued request with a fresh ``error()`` (the dispatcher is closing)."""
        self._waiting.fail_all(error)

    def _candidates(self, model: str, exclude: frozenset[str], now: float) -> list[WorkerState]:
        serving = [w for w in self.workers.values() if w.serves(model) and w.has_slot(now)]
        if exclude:
            fresh = [w for w in serving if w.name not in exclude]
            # Only fall back to a worker that already failed this request when no other is left at all.
            if fresh or any(w.serves(model) and w.is_up(now) and w.name not in exclude for w in self.workers.values()):
                return fresh
        return serving

    def _pick(self, model: str, exclude: frozenset[str], now: float, key: str | None = None) -> WorkerState | None:
        candidates = self._candidates(model, exclude, now)
        if not candidates:
            return None
        worker = self._policy.choose(candidates, key)
        worker.in_flight += 1
        worker.requests += 1
        worker.breaker.on_dispatch()
        self._metrics.in_flight.labels(worker.name).set(worker.in_flight)
        return worker

    def schedule(self) -> None:
        """Hand free slots to waiters (see :meth:`_WaitQueues.assign`), all on one reading of the clock."""
        if not self._waiting.count:
            return
        now = self._clock()
        self._waiting.assign(lambda waiter: self._pick(waiter.model, waiter.exclude, now, waiter.key))

    async def acquire(
        self,
        model: str,
        priority: Priority,
        deadline: float,
        exclude: frozenset[str],
        loop: asyncio.AbstractEventLoop,
        key: str | None = None,
    ) -> WorkerState:
        """Take a slot on a worker now, or queue for one until the deadline (a retry queues at the front).

        ``key`` is the request's routing key, handed to the balancing policy.
        """
        now = self._clock()
        if not any(w.serves(model) for w in self.workers.values()):
            self._metrics.rejected.labels("model_not_found").inc()
            known = ", ".join(sorted({m for w in self.workers.values() for m in w.models})) or "none"
            raise ModelNotFoundError(f"no worker serves model {model!r} (served: {known})")
        if not self._waiting.ahead_of(priority):
            worker = self._pick(model, exclude, now, key)
            if worker is not None:
                self._metrics.queue_wait.labels(priority.name.lower()).observe(0.0)
                return worker
        if not any(w.serves(model) and w.is_up(now) for w in self.workers.values()):
            self._metrics.rejected.labels("no_worker").inc()
            raise NoWorkerError(
                f"no healthy worker serves model {model!r} right now", retry_after_s=self._config.health_interval_s
            )
        limit, queued = _queue_limit(self._config, priority), self._waiting.count
        if queued >= limit:
            self._metrics.rejected.labels("overloaded").inc()
            raise OverloadedError(
                f"LLM queue is full ({queued} waiting, limit {limit} for {priority.name.lower()} requests)",
                retry_after_s=_retry_after(list(self.workers.values()), queued),
            )
        waiter = _Waiter(model, priority, exclude, loop.create_future(), self._clock(), key)
        self._waiting.push(waiter)
        try:
            await _wait_for_slot(waiter, deadline, self._clock)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if not waiter.future.done():
            self._abandon(waiter)
            self._metrics.rejected.labels("deadline_in_queue").inc()
            raise DeadlineExceededError(f"deadline passed after {self._clock() - waiter.enqueued_at:.2f}s in queue")
        self._metrics.queue_wait.labels(priority.name.lower()).observe(self._clock() - waiter.enqueued_at)
        return waiter.future.result()

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
            # Assigned in the same instant the deadline fired: hand the slot back.
            self.release(waiter.future.result(), outcome="abandoned", latency_s=None)
        else:
            waiter.future.cancel()
        self._waiting.remove(waiter)

    def release(self, worker: WorkerState, *, outcome: str, latency_s: float | None, tokens: int = 1) -> None:
        """Give a slot back with the request's ``outcome`` (ok, failed, abandoned, client_error), then schedule."""
        worker.in_flight -= 1
        if outcome == "ok":
            worker.breaker.record_success()
            if latency_s is not None:
                worker.observe_latency(latency_s, self._config.latency_decay_s, tokens=tokens)
                self._metrics.latency.labels(worker.name).observe(latency_s)
        elif outcome == "failed":
            worker.failures += 1
            worker.breaker.record_failure()
        else:  # abandoned / client error: no verdict on the worker
            worker.breaker.release_probe()
            if outcome == "client_error":
                worker.breaker.record_success()
        if not worker.removed:
            self._metrics.in_flight.labels(worker.name).set(worker.in_flight)
            self._metrics.requests.labels(worker.name, outcome).inc()
            publish(worker, self._metrics)
        self.schedule()
