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
  outstanding, power of two choices weighted by latency) among workers with a free slot;
- **failure handling**: a refused connection takes a worker out at once and the health
  loop brings it back; a breaker per worker opens after failures in a row; a call that
  fails before its first token is retried on another worker; a stream that breaks
  after its first token ends with :class:`~llms.errors.StreamInterruptedError`;
- **live changes**: :meth:`Dispatcher.add_worker` / :meth:`Dispatcher.remove_worker`.

It speaks the OpenAI chat-completions protocol with plain dicts (httpx + httpx-sse), so it
sits in front of vLLM, ollama's ``/v1`` and Tandem's embedded worker alike.

Example:
    >>> async def main():  # doctest: +SKIP
    ...     async with Dispatcher(DispatcherConfig(), [WorkerConfig(url="http://127.0.0.1:9001/v1")]) as d:
    ...         done = await d.complete({"model": "tandem-base", "messages": [{"role": "user", "content": "hi"}]})
    ...         return done.body["choices"][0]["message"]["content"]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from types import TracebackType
from typing import Any, Self

import httpx
from httpx_sse import EventSource, ServerSentEvent

from llms.balancing import Policy, make_policy
from llms.config import DispatcherConfig, WorkerConfig
from llms.errors import (
    DeadlineExceededError,
    InvalidChatRequestError,
    MalformedToolCallError,
    ModelNotFoundError,
    NoWorkerError,
    OverloadedError,
    StreamInterruptedError,
    WorkerError,
)
from llms.metrics import DispatcherMetrics
from llms.tool_calls import normalize_message_tool_calls
from llms.workers import WorkerSnapshot, WorkerState

__all__ = ["Completion", "Dispatcher", "Priority"]

logger = logging.getLogger("tandem.llms")

_BREAKER_CODE = {"closed": 0, "half_open": 1, "open": 2}


class Priority(IntEnum):
    """Lower leaves the queue first."""

    INTERACTIVE = 0
    BATCH = 1


@dataclass(frozen=True)
class Completion:
    """A non-streamed chat completion and where it came from."""

    body: dict[str, Any]
    worker: str
    attempts: int
    queue_wait_s: float
    latency_s: float

    @property
    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = self.body["choices"][0]["message"]
        return message


@dataclass(eq=False)
class _Waiter:
    model: str
    priority: Priority
    exclude: frozenset[str]
    future: asyncio.Future[WorkerState]
    enqueued_at: float = field(default_factory=time.monotonic)


class _AttemptFailedError(Exception):
    """One attempt failed in a way another worker may not share (retry if time and attempts remain)."""

    def __init__(self, kind: str, message: str, *, mark_down: bool = False, breaker: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.mark_down = mark_down
        self.breaker = breaker


class Dispatcher:
    """Bounded priority queue + load balancer + health checks over OpenAI-compatible workers.

    Use it as an async context manager (or call :meth:`start` / :meth:`aclose`) inside
    the event loop that will use it; it is not thread-safe, by design: one loop owns it.
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
    ) -> None:
        self.config = config
        self.metrics = metrics or DispatcherMetrics()
        self._rng = rng or random.Random()
        self._policy: Policy = make_policy(config.policy, self._rng)
        self._workers: dict[str, WorkerState] = {}
        self._order = 0
        self._queues: dict[Priority, deque[_Waiter]] = {p: deque() for p in Priority}
        self._queued = 0
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
        for queue in self._queues.values():
            while queue:
                waiter = queue.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(NoWorkerError("the dispatcher is shutting down"))
        self._queued = 0
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
        )
        self._order += 1
        self._workers[config.name] = state
        self.metrics.healthy.labels(config.name).set(1)
        self.metrics.breaker.labels(config.name).set(0)
        self.metrics.in_flight.labels(config.name).set(0)
        logger.info("llm worker added", extra={"worker": config.name, "url": config.url})
        if self._client is not None and self._health_checks and not state.models:
            asyncio.get_running_loop().create_task(self._check_one(state))
        self._schedule()

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
        return self._queued

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
        try:
            response = await self._client.get(
                worker.config.liveness_url, headers=self._headers(worker), timeout=self.config.health_timeout_s
            )
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok and not worker.models:
            ok = await self._discover_models(worker)
        if ok:
            worker.failed_checks = 0
            if not worker.healthy:
                # The process answers again (restarted): give it a clean breaker too.
                worker.healthy = True
                worker.breaker.reset()
                logger.info("llm worker back", extra={"worker": worker.name})
            self._publish(worker)
            self._schedule()
            return
        worker.failed_checks += 1
        if worker.healthy and worker.failed_checks >= self.config.unhealthy_after:
            self._mark_down(worker, "health check failed")

    async def _discover_models(self, worker: WorkerState) -> bool:
        assert self._client is not None
        try:
            response = await self._client.get(
                worker.config.models_url, headers=self._headers(worker), timeout=self.config.health_timeout_s
            )
            response.raise_for_status()
            worker.models = frozenset(str(m["id"]) for m in response.json()["data"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return False
        return True

    def _mark_down(self, worker: WorkerState, reason: str) -> None:
        if worker.healthy:
            worker.healthy = False
            logger.warning("llm worker out", extra={"worker": worker.name, "reason": reason})
        self._publish(worker)

    def _publish(self, worker: WorkerState) -> None:
        if worker.removed:
            return
        self.metrics.healthy.labels(worker.name).set(1 if worker.healthy else 0)
        self.metrics.breaker.labels(worker.name).set(_BREAKER_CODE[worker.breaker.state])

    # --------------------------------------------------------- queue & routing
    def _candidates(self, model: str, exclude: frozenset[str], now: float) -> list[WorkerState]:
        serving = [w for w in self._workers.values() if w.serves(model) and w.has_slot(now)]
        if exclude:
            fresh = [w for w in serving if w.name not in exclude]
            # Only fall back to a worker that already failed this request when no other is left at all.
            if fresh or any(w.serves(model) and w.is_up(now) and w.name not in exclude for w in self._workers.values()):
                return fresh
        return serving

    def _pick(self, model: str, exclude: frozenset[str], now: float) -> WorkerState | None:
        candidates = self._candidates(model, exclude, now)
        if not candidates:
            return None
        worker = self._policy.choose(candidates)
        worker.in_flight += 1
        worker.requests += 1
        worker.breaker.on_dispatch()
        self.metrics.in_flight.labels(worker.name).set(worker.in_flight)
        return worker

    def _schedule(self) -> None:
        """Hand free slots to waiters, highest priority first, in arrival order within a priority."""
        if not self._queued:
            return
        now = time.monotonic()
        for priority in Priority:
            queue = self._queues[priority]
            if not queue:
                continue
            kept: deque[_Waiter] = deque()
            while queue:
                waiter = queue.popleft()
                if waiter.future.done():
                    self._queued -= 1
                    continue
                worker = self._pick(waiter.model, waiter.exclude, now)
                if worker is None:
                    kept.append(waiter)
                    continue
                self._queued -= 1
                waiter.future.set_result(worker)
            self._queues[priority] = kept
            self.metrics.queue_depth.labels(priority.name.lower()).set(len(kept))

    def _retry_after(self) -> float:
        capacity = sum(w.config.max_concurrency for w in self._workers.values() if w.is_up()) or 1
        latencies = [w.latency_ewma_s for w in self._workers.values() if w.latency_ewma_s is not None]
        service = sum(latencies) / len(latencies) if latencies else 1.0
        return float(max(1, math.ceil(service * (self._queued + 1) / capacity)))

    async def _acquire(self, model: str, priority: Priority, deadline: float, exclude: frozenset[str]) -> WorkerState:
        """Take a slot on a worker now, or queue for one until the deadline (a retry queues at the front)."""
        now = time.monotonic()
        if self._closing or self._client is None:
            raise NoWorkerError("the LLM dispatcher is not running (shutting down or not started)")
        if not any(w.serves(model) for w in self._workers.values()):
            self.metrics.rejected.labels("model_not_found").inc()
            known = ", ".join(sorted(self.models())) or "none"
            raise ModelNotFoundError(f"no worker serves model {model!r} (served: {known})")
        ahead = any(self._queues[p] for p in Priority if p <= priority)
        if not ahead:
            worker = self._pick(model, exclude, now)
            if worker is not None:
                self.metrics.queue_wait.labels(priority.name.lower()).observe(0.0)
                return worker
        if not any(w.serves(model) and w.is_up(now) for w in self._workers.values()):
            self.metrics.rejected.labels("no_worker").inc()
            raise NoWorkerError(
                f"no healthy worker serves model {model!r} right now", retry_after_s=self.config.health_interval_s
            )
        limit = self.config.max_queue
        if priority is not Priority.INTERACTIVE:
            limit = int(limit * self.config.batch_queue_fraction)
        if self._queued >= limit:
            self.metrics.rejected.labels("overloaded").inc()
            raise OverloadedError(
                f"LLM queue is full ({self._queued} waiting, limit {limit} for {priority.name.lower()} requests)",
                retry_after_s=self._retry_after(),
            )
        assert self.loop is not None, "Dispatcher.start() was not awaited"
        waiter = _Waiter(model, priority, exclude, self.loop.create_future())
        if exclude:
            self._queues[priority].appendleft(waiter)
        else:
            self._queues[priority].append(waiter)
        self._queued += 1
        self.metrics.queue_depth.labels(priority.name.lower()).set(len(self._queues[priority]))
        try:
            done, _ = await asyncio.wait({waiter.future}, timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if not done:
            self._abandon(waiter)
            self.metrics.rejected.labels("deadline_in_queue").inc()
            raise DeadlineExceededError(f"deadline passed after {time.monotonic() - waiter.enqueued_at:.2f}s in queue")
        self.metrics.queue_wait.labels(priority.name.lower()).observe(time.monotonic() - waiter.enqueued_at)
        return waiter.future.result()

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
            # Assigned in the same instant the deadline fired: hand the slot back.
            self._release(waiter.future.result(), outcome="abandoned", latency_s=None)
        else:
            waiter.future.cancel()
        with contextlib.suppress(ValueError):
            self._queues[waiter.priority].remove(waiter)
            self._queued -= 1
            self.metrics.queue_depth.labels(waiter.priority.name.lower()).set(len(self._queues[waiter.priority]))

    def _release(self, worker: WorkerState, *, outcome: str, latency_s: float | None, tokens: int = 1) -> None:
        worker.in_flight -= 1
        if outcome == "ok":
            worker.breaker.record_success()
            if latency_s is not None:
                worker.observe_latency(latency_s, self.config.latency_decay_s, tokens=tokens)
                self.metrics.latency.labels(worker.name).observe(latency_s)
        elif outcome == "failed":
            worker.failures += 1
            worker.breaker.record_failure()
        else:  # abandoned / client error: no verdict on the worker
            worker.breaker.release_probe()
            if outcome == "client_error":
                worker.breaker.record_success()
        if not worker.removed:
            self.metrics.in_flight.labels(worker.name).set(worker.in_flight)
            self.metrics.requests.labels(worker.name, outcome).inc()
            self._publish(worker)
        self._schedule()

    # -------------------------------------------------------------------- calls
    def _headers(self, worker: WorkerState) -> dict[str, str]:
        key = worker.config.api_key
        return {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}

    def _deadline(self, priority: Priority, deadline_s: float | None) -> float:
        if deadline_s is None:
            deadline_s = (
                self.config.interactive_deadline_s if priority is Priority.INTERACTIVE else self.config.batch_deadline_s
            )
        return time.monotonic() + deadline_s

    @staticmethod
    def _model_of(payload: Mapping[str, Any]) -> str:
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidChatRequestError("the request names no model")
        if not isinstance(payload.get("messages"), list) or not payload["messages"]:
            raise InvalidChatRequestError("the request has no messages")
        return model

    def _classify_status(self, worker: WorkerState, response: httpx.Response, body: bytes) -> _AttemptFailedError:
        """Map a worker's error status: the request's own fault is raised, anything else may be retried."""
        status = response.status_code
        detail = _error_detail(body) or response.reason_phrase
        if status == 404:
            # The worker does not (or no longer) serve this model: its list is stale, not a fault.
            return _AttemptFailedError("model_not_found", f"{worker.name}: {detail}", breaker=False)
        if status in {400, 413, 422}:
            raise InvalidChatRequestError(f"the worker refused the request: {detail}")
        return _AttemptFailedError(f"http_{status}", f"{worker.name} answered {status}: {detail}")

    def _on_failure(self, worker: WorkerState, failure: _AttemptFailedError) -> None:
        if self._closing:
            self._release(worker, outcome="abandoned", latency_s=None)
            raise NoWorkerError("the LLM dispatcher is shutting down") from failure
        self.metrics.errors.labels(worker.name, failure.kind).inc()
        if failure.mark_down:
            self._mark_down(worker, failure.kind)
        self._release(worker, outcome="failed" if failure.breaker else "abandoned", latency_s=None)

    def _may_retry(self, worker: WorkerState, failure: _AttemptFailedError, errors: list[str], deadline: float) -> bool:
        """Account for a failed attempt; True when time is left to try another worker."""
        self._on_failure(worker, failure)
        errors.append(str(failure))
        if time.monotonic() >= deadline:
            return False
        self.metrics.retries.labels(worker.name).inc()
        return True

    def _give_up(self, errors: list[str], deadline: float) -> DeadlineExceededError | WorkerError:
        if time.monotonic() >= deadline:
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
        tool_names = _tool_names(payload)
        exclude: frozenset[str] = frozenset()
        errors: list[str] = []
        started = time.monotonic()
        for attempt in range(1, self.config.max_attempts + 1):
            queued_at = time.monotonic()
            worker = await self._acquire(model, priority, deadline, exclude)
            queue_wait = time.monotonic() - queued_at
            t0 = time.monotonic()
            try:
                data = await self._post(worker, body, deadline)
            except _AttemptFailedError as failure:
                exclude |= {worker.name}
                if self._may_retry(worker, failure, errors, deadline):
                    continue
                break
            except DeadlineExceededError:
                self.metrics.errors.labels(worker.name, "deadline").inc()
                self._release(worker, outcome="failed", latency_s=None)
                self.metrics.rejected.labels("deadline_on_worker").inc()
                raise
            except BaseException:
                self._release(worker, outcome="client_error", latency_s=None)
                raise
            latency = time.monotonic() - t0
            self._release(worker, outcome="ok", latency_s=latency, tokens=_completion_tokens(data))
            try:
                message = data["choices"][0]["message"]
                text_call = isinstance(message.get("content"), str) and "<tool_call>" in message["content"]
                if (tool_names or text_call) and normalize_message_tool_calls(message, tool_names):
                    data["choices"][0]["finish_reason"] = "tool_calls"
            except MalformedToolCallError:
                self.metrics.malformed_tool_calls.labels(worker.name).inc()
                raise
            except (KeyError, IndexError, TypeError) as exc:
                self.metrics.errors.labels(worker.name, "bad_response").inc()
                raise WorkerError(f"{worker.name} returned a response without choices[0].message") from exc
            return Completion(body=data, worker=worker.name, attempts=attempt, queue_wait_s=queue_wait,
                              latency_s=time.monotonic() - started)  # fmt: skip
        raise self._give_up(errors, deadline)

    def _attempt_budget(self, deadline: float) -> tuple[httpx.AsyncClient, float, httpx.Timeout]:
        """The client, the time left and the httpx timeouts for one attempt (refused when none is left)."""
        if self._client is None:
            raise NoWorkerError("the LLM dispatcher is shutting down")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError("deadline passed before the request reached a worker")
        return self._client, remaining, httpx.Timeout(remaining, connect=min(self.config.connect_timeout_s, remaining))

    async def _post(self, worker: WorkerState, body: Mapping[str, Any], deadline: float) -> dict[str, Any]:
        client, remaining, timeout = self._attempt_budget(deadline)
        try:
            # asyncio's timeout as well as httpx's: the deadline holds whatever the transport does.
            async with asyncio.timeout(remaining):
                response = await client.post(
                    worker.config.chat_url, json=body, headers=self._headers(worker), timeout=timeout
                )
        except TimeoutError as exc:
            raise DeadlineExceededError(f"{worker.name} did not answer within the deadline") from exc
        except httpx.ConnectError as exc:
            raise _AttemptFailedError("connect", f"{worker.name}: cannot connect ({exc})", mark_down=True) from exc
        except httpx.TimeoutException as exc:
            if time.monotonic() >= deadline - 1e-3:
                raise DeadlineExceededError(f"{worker.name} did not answer within the deadline") from exc
            raise _AttemptFailedError("timeout", f"{worker.name}: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise _AttemptFailedError("transport", f"{worker.name}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise self._classify_status(worker, response, response.content)
        try:
            data = response.json()
        except ValueError as exc:
            raise _AttemptFailedError("bad_json", f"{worker.name} returned invalid JSON") from exc
        if not isinstance(data, dict):
            raise _AttemptFailedError("bad_json", f"{worker.name} returned JSON that is not an object")
        return data

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
        errors: list[str] = []
        exclude: frozenset[str] = frozenset()
        for _attempt in range(1, self.config.max_attempts + 1):
            worker = await self._acquire(model, priority, deadline, exclude)
            t0 = time.monotonic()
            yielded = False
            chunks = 0
            outcome = "client_error"  # if the consumer walks away, that says nothing about the worker
            try:
                async for chunk in self._stream_from(worker, body, deadline, t0):
                    yielded = True
                    chunks += 1
                    yield chunk
                outcome = "ok"
                return
            except _AttemptFailedError as failure:
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
                    latency = time.monotonic() - t0 if outcome == "ok" else None
                    self._release(worker, outcome=outcome, latency_s=latency, tokens=chunks)
        raise self._give_up(errors, deadline)

    async def _stream_from(
        self, worker: WorkerState, body: Mapping[str, Any], deadline: float, t0: float
    ) -> AsyncIterator[dict[str, Any]]:
        # Read timeouts are enforced per chunk below; httpx's own stays as a backstop.
        client, remaining, timeout = self._attempt_budget(deadline)
        request = client.build_request(
            "POST", worker.config.chat_url, json=body, headers=self._headers(worker), timeout=timeout
        )
        first = True
        try:
            async with asyncio.timeout(min(remaining, self.config.first_token_timeout_s)):
                response = await client.send(request, stream=True)
        except TimeoutError as exc:
            if time.monotonic() >= deadline - 1e-3:
                raise DeadlineExceededError(f"{worker.name} did not answer within the deadline") from exc
            raise _AttemptFailedError("timeout", f"{worker.name}: no response headers in time") from exc
        except httpx.ConnectError as exc:
            raise _AttemptFailedError("connect", f"{worker.name}: cannot connect ({exc})", mark_down=True) from exc
        except httpx.TimeoutException as exc:
            raise _AttemptFailedError("timeout", f"{worker.name}: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise _AttemptFailedError("transport", f"{worker.name}: {type(exc).__name__}: {exc}") from exc
        try:
            if response.status_code != 200:
                raise self._classify_status(worker, response, await response.aread())
            events = EventSource(response).aiter_sse()
            while True:
                limit = self.config.first_token_timeout_s if first else self.config.stream_idle_timeout_s
                event = await self._next_event(worker, events, min(limit, deadline - time.monotonic()), deadline)
                if event is None or event.data.strip() == "[DONE]":
                    return
                try:
                    chunk = json.loads(event.data)
                except json.JSONDecodeError as exc:
                    raise _AttemptFailedError("bad_chunk", f"{worker.name} streamed invalid JSON") from exc
                if isinstance(chunk, dict) and "error" in chunk:
                    raise _AttemptFailedError("stream_error", f"{worker.name}: {_error_detail(event.data.encode())}")
                if first:
                    first = False
                    self.metrics.ttft.labels(worker.name).observe(time.monotonic() - t0)
                yield chunk
        finally:
            await response.aclose()

    async def _next_event(
        self, worker: WorkerState, events: AsyncIterator[ServerSentEvent], timeout: float, deadline: float
    ) -> ServerSentEvent | None:
        try:
            # asyncio.timeout, not wait_for: no extra task per chunk (wait_for cost ~70 µs a chunk).
            async with asyncio.timeout(max(0.0, timeout)):
                return await anext(events)
        except StopAsyncIteration:
            return None
        except TimeoutError as exc:
            if time.monotonic() >= deadline - 1e-3:
                raise DeadlineExceededError(f"{worker.name} did not finish within the deadline") from exc
            raise _AttemptFailedError("stalled", f"{worker.name} sent nothing for {timeout:.1f}s") from exc
        except httpx.HTTPError as exc:
            raise _AttemptFailedError("transport", f"{worker.name}: {type(exc).__name__}: {exc}") from exc


def _completion_tokens(data: Mapping[str, Any]) -> int:
    usage = data.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and tokens > 0 else 1


def _tool_names(payload: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    tools: Sequence[Any] = payload.get("tools") or ()
    for tool in tools:
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            name = tool["function"].get("name")
            if isinstance(name, str):
                names.add(name)
    return names


def _error_detail(body: bytes) -> str:
    """The message of an OpenAI-style ``{"error": {"message": …}}`` body, else the body's start."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        error = data.get("error", data.get("detail"))
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(data)[:200]
