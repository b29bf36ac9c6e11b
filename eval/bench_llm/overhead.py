"""The dispatcher's own cost per request: dispatched calls timed against the same calls made directly.

(a) In process, on an instant ``httpx.MockTransport``: ``Dispatcher.complete()`` and
``Dispatcher.stream()`` against the same POST through a bare ``httpx.AsyncClient``, in
interleaved blocks so drift and garbage collection hit both paths alike; (b) end to end,
against the zero-delay worker process.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from eval.bench_llm.config import MODEL, BenchConfig
from eval.bench_llm.load import chat_payload
from eval.bench_llm.measure import percentile
from eval.bench_llm.workers import WorkerPool
from llms.config import DispatcherConfig, WorkerConfig
from llms.dispatcher import Dispatcher

__all__ = ["measure_overhead_end_to_end", "measure_overhead_in_process"]


def _completion_body() -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " * 16}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24},
    }


def _sse_body(tokens: int) -> bytes:
    """A 16-token stream as the worker sends it: a role chunk with the first token, one per token, a finish chunk."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        data = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return f"data: {json.dumps(data)}\n\n"

    parts = [chunk({"role": "assistant", "content": "w0 "})]
    parts += [chunk({"content": f"w{i} "}) for i in range(1, tokens)]
    parts += [chunk({}, "stop"), "data: [DONE]\n\n"]
    return "".join(parts).encode()


async def _interleaved(
    calls: Mapping[str, Callable[[], Awaitable[None]]], n: int, *, block: int = 100, warmup: int = 100
) -> dict[str, list[float]]:
    """Time ``n`` sequential calls of each, in alternating blocks (drift and GC hit every path alike); µs per call."""
    for call in calls.values():
        for _ in range(warmup):
            await call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for b in range(max(1, math.ceil(n / block))):
        for name in order if b % 2 == 0 else reversed(order):
            call = calls[name]
            for _ in range(min(block, n - b * block)):
                t = time.perf_counter_ns()
                await call()
                times[name].append((time.perf_counter_ns() - t) / 1000)
    return times


def _overhead(times: Mapping[str, list[float]], n: int) -> dict[str, Any]:
    direct = statistics.median(times["direct"])
    dispatched = statistics.median(times["dispatched"])
    return {
        "n": n,
        "direct_median_us": direct,
        "dispatched_median_us": dispatched,
        "direct_p99_us": percentile(times["direct"], 99),
        "dispatched_p99_us": percentile(times["dispatched"], 99),
        "overhead_ms": (dispatched - direct) / 1000,
    }


async def measure_overhead_in_process(cfg: BenchConfig) -> dict[str, Any]:
    """(a) The dispatcher against a bare ``httpx.AsyncClient``, both on an instant in-process transport."""
    body = json.dumps(_completion_body()).encode()
    sse = _sse_body(cfg.max_tokens)

    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("stream"):
            return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    transport = httpx.MockTransport(handler)
    base = "http://mock.invalid/v1"
    payload = chat_payload(cfg.max_tokens)
    worker = WorkerConfig(url=base, name="mock", models=[MODEL], max_concurrency=cfg.max_concurrency)
    async with (
        Dispatcher(DispatcherConfig(), [worker], transport=transport, health_checks=False) as d,
        httpx.AsyncClient(transport=transport, trust_env=False) as client,
    ):

        async def direct() -> None:
            response = await client.post(f"{base}/chat/completions", json={**payload, "stream": False})
            response.raise_for_status()
            response.json()["choices"][0]["message"]

        async def dispatched() -> None:
            await d.complete(payload)

        async def direct_stream() -> None:
            async with aconnect_sse(client, "POST", f"{base}/chat/completions", json={**payload, "stream": True}) as es:
                async for event in es.aiter_sse():
                    if event.data == "[DONE]":
                        break
                    json.loads(event.data)

        async def dispatched_stream() -> None:
            async for _chunk in d.stream(payload):
                pass

        complete = await _interleaved({"direct": direct, "dispatched": dispatched}, cfg.overhead_n)
        n_stream = max(100, cfg.overhead_n // 3)
        stream = await _interleaved({"direct": direct_stream, "dispatched": dispatched_stream}, n_stream)
    return {"complete": _overhead(complete, cfg.overhead_n), "stream": _overhead(stream, n_stream)}


async def measure_overhead_end_to_end(pool: WorkerPool, cfg: BenchConfig) -> dict[str, Any]:
    """(b) Non-streamed calls to the zero-delay worker process: through the dispatcher against a direct client."""
    url = pool.url("zero")
    payload = chat_payload(cfg.max_tokens)
    worker = WorkerConfig(url=url, name="zero", models=[MODEL], max_concurrency=cfg.max_concurrency)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)  # as the dispatcher's own client
    async with (
        Dispatcher(DispatcherConfig(), [worker]) as d,
        httpx.AsyncClient(limits=limits, trust_env=False) as client,
    ):

        async def direct() -> None:
            response = await client.post(f"{url}/chat/completions", json={**payload, "stream": False})
            response.raise_for_status()
            response.json()["choices"][0]["message"]

        async def dispatched() -> None:
            await d.complete(payload)

        times = await _interleaved({"direct": direct, "dispatched": dispatched}, cfg.e2e_n, block=50, warmup=50)
    return _overhead(times, cfg.e2e_n)
