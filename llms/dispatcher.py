"""The one way Tandem calls an LLM: a bounded priority queue in front of a balanced pool of workers.

Every chat completion (the ranker's tool calls, the explainer's stream, batch experiments)
goes through :class:`Dispatcher`:

- **admission**: a request that would wait while the queue is full is refused at once
  with :class:`~llms.errors.OverloadedError` (the API turns it into 429 + Retry-After);
  batch work may fill only part of the queue, so interactive chat always finds room;
- **priorities and deadlines**: interactive requests leave the queue before batch ones;
  each request carries a deadline, and one that passes it in the queue or on a worker
  ends with :class:`~llms.errors.DeadlineExceededError`, never a hang;
- **balancing**: per-worker concurrency limits, then a policy (round-robin, least
  outstanding, power of two choices weighted by latency, or session affinity by the
  request's ``user`` field / prompt prefix) among workers with a free slot;
- **failure handling**: a refused connection takes a worker out at once and the health
  loop brings it back; a breaker per worker opens after failures in a row; a call that
  fails before its first token is retried on another worker; a stream that breaks
  after its first token ends with :class:`~llms.errors.StreamInterruptedError`;
- **live changes**: :meth:`Dispatcher.add_worker` / :meth:`Dispatcher.remove_worker`.

It speaks the OpenAI chat-completions protocol with plain dicts (httpx + httpx-sse), so it
sits in front of vLLM, ollama's ``/v1`` and Tandem's embedded worker alike. This module
coordinates; the parts live beside it: the queue and priorities in :mod:`llms.admission`, one
try on one worker in :mod:`llms.attempts` and :mod:`llms.streaming`, probes in :mod:`llms.health`.

Example:
    >>> async def main():  # doctest: +SKIP
    ...     async with Dispatcher(DispatcherConfig(), [WorkerConfig(url="http://127.0.0.1:9001/v1")]) as d:
    ...         done = await d.complete({"model": "tandem-base", "messages": [{"role": "user", "content": "hi"}]})
    ...         return done.body["choices"][0]["message"]["content"]
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from llms.admission import Admission, Priority
from llms.attempts import Attempt, AttemptFailedError, completion_tokens, post_chat, read_reply, tool_names
from llms.balancing import Affinity, Policy, make_policy, routing_key
from llms.client import Completion
from llms.config import DispatcherConfig, WorkerConfig
from llms.errors import (
    DeadlineExceededError,
    InvalidChatRequestError,
    NoWorkerError,
    StreamInterruptedError,
    WorkerError,
)
from llms.health import mark_down, probe, record_check
from llms.metrics import DispatcherMetrics
from llms.streaming import stream_chat
from llms.workers import WorkerSnapshot, WorkerState

__all__ = ["Dispatcher", "Priority"]

logger = logging.getLogger("tandem.llms")


class Dispatcher:
    """Bounded priority queue + load balancer + health checks over OpenAI-compatible workers.

    Use it as an async context manager (or call :meth:`start` / :meth:`aclose`) inside
    the event loop that will use it; it is not thread-safe, by design: one loop owns it.

    ``clock`` (seconds, monotonic) is what deadlines, queue waits, latencies and the workers'
    breakers are measured on; tests pass a fake one to move time without sleeping. Real
    waits (a queued request, a worker's answer) still sleep, for the time left on ``clock``.
    """

    def __init__(
        self,
        config: DispatcherConfig,
        workers: Iterable[WorkerConfig] = (),
        *,
        metrics: DispatcherMetrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        health_checks: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self.metrics = metrics or DispatcherMetrics()
        self._rng = rng or random.Random()
        self._policy: Policy = make_policy(config.policy, self._rng)
        self._admission = Admission(config, self.metrics, self._policy, clock=clock)
        self._workers = self._admission.workers  # one table: admission routes among the workers added here
        self._order = 0
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._health_checks = health_checks
        self._closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        for worker in workers:
            self.add_worker(worker)

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> Self:
        if self._client is None:
            self._closing = False
            self.loop = asyncio.get_running_loop()
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
            self._client = httpx.AsyncClient(transport=self._transport, limits=limits, trust_env=False)
            if self._health_checks:
                await self.check_health()  # learn models and liveness before the first request
                self._health_task = asyncio.create_task(self._health_loop(), name="tandem-llm-health")
        return self

    async def aclose(self) -> None:
        self._closing = True  # requests still running fail as "shutting down", not as worker faults
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        self._admission.fail_all(lambda: NoWorkerError("the dispatcher is shutting down"))
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------- workers
    def add_worker(self, config: WorkerConfig) -> None:
        """Add (or replace) a worker; it takes traffic at once and is health-checked from now on."""
        if config.name in self._workers:
            self.remove_worker(config.name)
        state = WorkerState(
            config,
            order=self._order,
            breaker_threshold=self.config.breaker_threshold,
            breaker_reset_s=self.config.breaker_reset_s,
            clock=self._clock,
        )
        self._order += 1
        self._workers[config.name] = state
        self.metrics.healthy.labels(config.name).set(1)
        self.metrics.breaker.labels(config.name).set(0)
        self.metrics.in_flight.labels(config.name).set(0)
        logger.info("llm worker added", extra={"worker": config.name, "url": config.url})
        if self._client is not None and self._health_checks and not state.models:
            asyncio.get_running_loop().create_task(self._check_one(state))
        self._admission.schedule()

    def remove_worker(self, name: str) -> None:
        """Stop routing to a worker; requests already on it finish normally."""
        state = self._workers.pop(name, None)
        if state is None:
            raise KeyError(name)
        state.removed = True
        self.metrics.forget_worker(name)
        logger.info("llm worker removed", extra={"worker": name})

    def workers(self) -> list[WorkerSnapshot]:
        return [w.snapshot() for w in self._workers.values()]

    def models(self) -> set[str]:
        return {m for w in self._workers.values() for m in w.models}

    def serves(self, model: str) -> bool:
        """Whether a healthy worker serves ``model`` now (a worker still starting has not listed its models yet)."""
        return any(w.serves(model) and w.is_up() for w in self._workers.values())

    @property
    def queued(self) -> int:
        return self._admission.queued

    # ------------------------------------------------------------ health checks
    async def check_health(self) -> None:
        """Check every worker once now (the background loop does this every ``health_interval_s``)."""
        await asyncio.gather(*(self._check_one(w) for w in list(self._workers.values())))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            try:
                await self.check_health()
            except Exception:  # the loop must survive anything a check throws
                logger.exception("llm health check failed")

    async def _check_one(self, worker: WorkerState) -> None:
        if self._client is None or worker.removed:
            return
        ok = await probe(self._client, worker, self.config.health_timeout_s)
        record_check(worker, ok, unhealthy_after=self.config.unhealthy_after, metrics=self.metrics)
        if ok:
            self._admission.schedule()

    # --------------------------------------------------------------- admission
    async def _acquire(
        self, model: str, priority: Priority, deadline: float, exclude: frozenset[str], key: str | None
    ) -> WorkerState:
        if self._closing or self._client is None:
            raise NoWorkerError("the LLM dispatcher is not running (shutting down or not started)")
        assert self.loop is not None, "Dispatcher.start() was not awaited"
        return await self._admission.acquire(model, priority, deadline, exclude, self.loop, key)

    def _routing_key(self, payload: Mapping[str, Any]) -> str | None:
        """The session (OpenAI's ``user``) or prompt-prefix key, computed only for a policy that routes by it."""
        return routing_key(payload) if isinstance(self._policy, Affinity) else None

    # -------------------------------------------------------------------- calls
    def _deadline(self, priority: Priority, deadline_s: float | None) -> float:
        if deadline_s is None:
            deadline_s = (
                self.config.interactive_deadline_s if priority is Priority.INTERACTIVE else self.config.batch_deadline_s
            )
        return self._clock() + deadline_s

    @staticmethod
    def _model_of(payload: Mapping[str, Any]) -> str:
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidChatRequestError("the request names no model")
        if not isinstance(payload.get("messages"), list) or not payload["messages"]:
            raise InvalidChatRequestError("the request has no messages")
        return model

    def _attempt(self, worker: WorkerState, deadline: float) -> Attempt:
        return Attempt.begin(
            self._client, worker, deadline, clock=self._clock, connect_timeout_s=self.config.connect_timeout_s
        )

    def _on_failure(self, worker: WorkerState, failure: AttemptFailedError) -> None:
        if self._closing:
            self._admission.release(worker, outcome="abandoned", latency_s=None)
            raise NoWorkerError("the LLM dispatcher is shutting down") from failure
        self.metrics.errors.labels(worker.name, failure.kind).inc()
        if failure.mark_down:
            mark_down(worker, failure.kind, self.metrics)
        self._admission.release(worker, outcome="failed" if failure.breaker else "abandoned", latency_s=None)

    def _may_retry(self, worker: WorkerState, failure: AttemptFailedError, errors: list[str], deadline: float) -> bool:
        """Account for a failed attempt; True when time is left to try another worker."""
        self._on_failure(worker, failure)
        errors.append(str(failure))
        if self._clock() >= deadline:
            return False
        self.metrics.retries.labels(worker.name).inc()
        return True

    def _give_up(self, errors: list[str], deadline: float) -> DeadlineExceededError | WorkerError:
        if self._clock() >= deadline:
            self.metrics.rejected.labels("deadline_on_worker").inc()
            return DeadlineExceededError(f"deadline passed after {len(errors)} failed attempt(s): {'; '.join(errors)}")
        return WorkerError(f"all {len(errors)} attempt(s) failed: {'; '.join(errors)}")

    async def complete(
        self,
        payload: Mapping[str, Any],
        *,
        priority: Priority = Priority.INTERACTIVE,
        deadline_s: float | None = None,
    ) -> Completion:
        """One non-streamed chat completion; retried on another worker if an attempt fails."""
        model = self._model_of(payload)
        deadline = self._deadline(priority, deadline_s)
        body = {**payload, "stream": False}
        tools = tool_names(payload)
        key = self._routing_key(payload)
        exclude: frozenset[str] = frozenset()
        errors: list[str] = []
        started = self._clock()
        for attempt in range(1, self.config.max_attempts + 1):
            queued_at = self._clock()
            worker = await self._acquire(model, priority, deadline, exclude, key)
            queue_wait = self._clock() - queued_at
            t0 = self._clock()
            try:
                data = await post_chat(self._attempt(worker, deadline), body)
            except AttemptFailedError as failure:
                exclude |= {worker.name}
                if self._may_retry(worker, failure, errors, deadline):
                    continue
                break
            except DeadlineExceededError:
                self.metrics.errors.labels(worker.name, "deadline").inc()
                self._admission.release(worker, outcome="failed", latency_s=None)
                self.metrics.rejected.labels("deadline_on_worker").inc()
                raise
            except BaseException:
                self._admission.release(worker, outcome="client_error", latency_s=None)
                raise
            latency = self._clock() - t0
            self._admission.release(worker, outcome="ok", latency_s=latency, tokens=completion_tokens(data))
            read_reply(data, tools, worker=worker.name, metrics=self.metrics)
            return Completion(body=data, worker=worker.name, attempts=attempt, queue_wait_s=queue_wait,
                              latency_s=self._clock() - started)  # fmt: skip
        raise self._give_up(errors, deadline)

    async def stream(
        self,
        payload: Mapping[str, Any],
        *,
        priority: Priority = Priority.INTERACTIVE,
        deadline_s: float | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Stream chat-completion chunks (OpenAI ``chat.completion.chunk`` dicts).

        Attempts that fail before the first chunk are retried on another worker; a break
        after it raises :class:`StreamInterruptedError` (the text so far cannot be unsaid).
        """
        model = self._model_of(payload)
        deadline = self._deadline(priority, deadline_s)
        body = {**payload, "stream": True}
        key = self._routing_key(payload)
        errors: list[str] = []
        exclude: frozenset[str] = frozenset()
        for _ in range(1, self.config.max_attempts + 1):
            worker = await self._acquire(model, priority, deadline, exclude, key)
            t0 = self._clock()
            yielded = False
            chunks = 0
            outcome = "client_error"  # if the consumer walks away, that says nothing about the worker
            try:
                source = stream_chat(
                    self._attempt(worker, deadline),
                    body,
                    first_token_timeout_s=self.config.first_token_timeout_s,
                    stream_idle_timeout_s=self.config.stream_idle_timeout_s,
                    on_first_chunk=functools.partial(self._observe_ttft, worker.name, t0),
                )
                async for chunk in source:
                    yielded = True
                    chunks += 1
                    yield chunk
                outcome = "ok"
                return
            except AttemptFailedError as failure:
                outcome = "handled"
                if yielded:
                    self._on_failure(worker, failure)
                    raise StreamInterruptedError(f"stream from {worker.name} broke: {failure}") from failure
                exclude |= {worker.name}
                if not self._may_retry(worker, failure, errors, deadline):
                    break
            except DeadlineExceededError:
                outcome = "failed"
                self.metrics.errors.labels(worker.name, "deadline").inc()
                self.metrics.rejected.labels("deadline_on_worker").inc()
                if yielded:
                    raise StreamInterruptedError("the deadline passed while the answer was streaming") from None
                raise
            finally:
                if outcome != "handled":
                    latency = self._clock() - t0 if outcome == "ok" else None
                    self._admission.release(worker, outcome=outcome, latency_s=latency, tokens=chunks)
        raise self._give_up(errors, deadline)

    def _observe_ttft(self, worker: str, t0: float) -> None:
        self.metrics.ttft.labels(worker).observe(self._clock() - t0)
