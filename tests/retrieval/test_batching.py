"""Dynamic micro-batching: batches form under concurrency, results stay with their callers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from retrieval.batching import BatchStats, MicroBatcher


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_concurrent_submits_share_batches_and_keep_their_results() -> None:
    seen: list[BatchStats] = []
    threads: set[str] = set()

    def double(xs: list[int]) -> list[int]:
        threads.add(threading.current_thread().name)
        time.sleep(0.01)  # a slow "encoder": callers pile up meanwhile
        return [x * 2 for x in xs]

    async def main() -> list[int]:
        b: MicroBatcher[int, int] = MicroBatcher(double, max_batch=8, max_wait_ms=5, on_batch=seen.append)
        await b.start()
        try:
            return await asyncio.gather(*[b.submit(i) for i in range(40)])
        finally:
            await b.close()

    assert _run(main()) == [i * 2 for i in range(40)]
    assert sum(s.size for s in seen) == 40
    assert max(s.size for s in seen) == 8  # bounded by max_batch
    assert len(seen) < 40  # and really batched
    assert len(threads) == 1 and next(iter(threads)) != threading.main_thread().name


def test_a_failing_item_fails_only_its_caller() -> None:
    def fn(xs: list[int]) -> list[int | BaseException]:
        return [ValueError(f"bad {x}") if x == 3 else x for x in xs]

    async def main() -> list[int | BaseException]:
        b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=16, max_wait_ms=5)
        await b.start()
        try:
            return await asyncio.gather(*[b.submit(i) for i in range(6)], return_exceptions=True)
        finally:
            await b.close()

    out = _run(main())
    assert [o for i, o in enumerate(out) if i != 3] == [0, 1, 2, 4, 5]
    assert isinstance(out[3], ValueError) and str(out[3]) == "bad 3"


def test_a_crashing_batch_fails_its_callers_and_the_batcher_keeps_going() -> None:
    calls = {"n": 0}

    def fn(xs: list[int]) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return xs

    async def main() -> tuple[BaseException | int, int]:
        b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=4, max_wait_ms=0)
        await b.start()
        try:
            first = await asyncio.gather(b.submit(1), return_exceptions=True)
            return first[0], await b.submit(2)
        finally:
            await b.close()

    first, second = _run(main())
    assert isinstance(first, RuntimeError) and second == 2


def test_cancelled_callers_are_skipped() -> None:
    ran: list[list[int]] = []

    def fn(xs: list[int]) -> list[int]:
        ran.append(xs)
        time.sleep(0.05)
        return xs

    async def main() -> int:
        b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=4, max_wait_ms=0)
        await b.start()
        try:
            busy = asyncio.create_task(b.submit(0))  # occupies the worker
            await asyncio.sleep(0.01)
            doomed = asyncio.create_task(b.submit(1))
            await asyncio.sleep(0)
            doomed.cancel()
            result = await b.submit(2)
            await busy
            return result
        finally:
            await b.close()

    assert _run(main()) == 2
    assert all(1 not in batch for batch in ran)


def test_submit_before_start_is_an_error() -> None:
    b: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs)
    with pytest.raises(RuntimeError, match="start"):
        _run(b.submit(1))
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda xs: xs, max_batch=0)
