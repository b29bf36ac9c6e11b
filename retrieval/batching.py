"""Dynamic micro-batching: concurrent async callers share one batched call on a worker thread.

An encoder costs nearly the same for one input as for sixteen, so a service that encodes
each request alone stops scaling at one core's worth of single-item calls. The batcher
queues requests; a single consumer takes whatever is waiting (up to ``max_batch``),
waits at most ``max_wait_ms`` for more, and runs the batch function off the event loop.
While a batch runs, new requests pile up and form the next batch, so batches grow with load.

Example:
    >>> batcher = MicroBatcher(lambda xs: [x * 2 for x in xs], max_batch=16)  # doctest: +SKIP
    >>> await batcher.start(); await batcher.submit(21)  # doctest: +SKIP
    42
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatchStats", "MicroBatcher", "serving_threads"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one batch looked like (reported to metrics hooks)."""

    size: int
    wait_ms: float
    run_ms: float


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    queued_at: float


class MicroBatcher(Generic[T, R]):
    """Coalesce concurrent ``submit`` calls into batches of ``fn`` run on one worker thread.

    ``fn`` takes a list of items and returns one result per item, in order; a result that is
    an exception instance is raised to that item's caller only, so one bad input does not
    fail its batch-mates. A caller that gives up (cancellation, deadline) is skipped.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "batcher",
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self._on_batch = on_batch
        self._name = name
        self._thread_init = thread_init
        self._queue: asyncio.Queue[_Pending[T, R]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._queue = asyncio.Queue()
        # One thread: torch already parallelises inside a batch; two batches at once would fight for cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name, initializer=self._thread_init)
        self._task = asyncio.create_task(self._consume(), name=self._name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(RuntimeError(f"{self._name} is shut down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, item: T) -> R:
        if self._queue is None or not self.running:
            raise RuntimeError(f"{self._name} is not running; call start() first")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, future, time.perf_counter()))
        return await future

    async def _collect(self) -> list[_Pending[T, R]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [p for p in batch if not p.future.done()]

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            started = time.perf_counter()
            items = [p.item for p in batch]
            try:
                results: Sequence[R | BaseException] = await loop.run_in_executor(self._executor, self._fn, items)
                if len(results) != len(batch):
                    raise RuntimeError(f"{self._name}: batch function returned {len(results)} results for {len(batch)}")
            except Exception as exc:
                results = [exc] * len(batch)
            finished = time.perf_counter()
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
            if self._on_batch is not None:
                wait_ms = (started - min(p.queued_at for p in batch)) * 1000
                self._on_batch(BatchStats(len(batch), wait_ms, (finished - started) * 1000))


def serving_threads(configured: int | None) -> int:
    """torch threads for serving: all cores but one, which is left to the event loop (HTTP, decoding)."""
    if configured is not None:
        return configured
    return max(1, (os.cpu_count() or 2) - 1)
