"""Tandem's dispatcher against LiteLLM's ``Router`` on the same SIMULATED workers, in one run.

Both sit in this process in front of the same ``tandem worker --simulate`` processes, each
worker a LiteLLM deployment (``openai/<model>`` with its ``api_base``). Four measurements:

1. **Latency** on the heterogeneous pool (fast, fast, 4× slower) at ``litellm_load`` of its
   capacity, every request streamed, the same seeded Poisson schedule for each router: p50/p99
   and TTFT from the planned arrival (as the rest of the benchmark).
2. **Overhead**: sequential non-streamed calls to the zero-delay worker, each router against a
   bare ``httpx.AsyncClient`` (interleaved blocks); the median difference is the router's cost.
3. **A worker dies mid-run**: three fast workers at ``kill_load``, half streamed, one SIGKILLed at
   ``litellm_kill_at_s`` and left dead; errors seen by callers and how long failures went on.
4. **Overload**: ``litellm_overload`` × capacity offered on three fast workers. Tandem's bounded
   queue (``overload_queue``, one request per slot in flight) refuses at once what it cannot
   queue (the API answers 429 + Retry-After); LiteLLM is configured as documented, and what it does
   with the excess is what is measured.

LiteLLM is imported only here (it takes seconds), with ``LITELLM_LOCAL_MODEL_COST_MAP`` set first
so it does not fetch its price map from the internet.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import logging
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from eval.bench_llm.config import HETEROGENEOUS, KILL_POOL, KILL_VICTIM, MODEL, BenchConfig, BenchError
from eval.bench_llm.load import chat_payload
from eval.bench_llm.measure import RequestRecord, percentile, poisson_schedule, summarise_requests
from eval.bench_llm.overhead import _interleaved, _overhead
from eval.bench_llm.workers import CpuMeter, WorkerPool
from eval.process import ServiceError, wait_http
from llms.config import DispatcherConfig, WorkerConfig
from llms.dispatcher import Dispatcher
from llms.errors import OverloadedError

__all__ = ["LITELLM_STRATEGIES", "litellm_available", "run_litellm_comparison", "summarise_kill"]

LITELLM_STRATEGIES: tuple[str, ...] = ("simple-shuffle", "least-busy")
GROUP = "tandem"  # LiteLLM's model group name for the workers

# (kind, payload) -> time of the first chunk (streams) or None; raises what the caller would see.
Send = Callable[[str, Mapping[str, Any]], Awaitable[float | None]]


def litellm_available() -> bool:
    """Whether LiteLLM is installed (a dev dependency), without importing it."""
    return importlib.util.find_spec("litellm") is not None


def _import_litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download at import
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm  # noqa: PLC0415 - seconds to import: only when the comparison runs

    litellm.suppress_debug_info = True
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return litellm


def make_router(litellm: Any, pool: WorkerPool, names: Sequence[str], strategy: str, **kwargs: Any) -> Any:
    """A ``litellm.Router`` with each worker as an ``openai/<model>`` deployment at its ``api_base``."""
    model_list = [
        {
            "model_name": GROUP,
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": pool.url(n), "api_key": "none"},
            "model_info": {"id": n},
        }
        for n in names
    ]
    return litellm.Router(model_list=model_list, routing_strategy=strategy, **kwargs)


class TruncatedStreamError(RuntimeError):
    """A stream that ended without a finish reason: the caller got part of an answer, reported as a success."""


def _finished(chunk: Any) -> bool:
    choices = chunk.get("choices") if isinstance(chunk, Mapping) else getattr(chunk, "choices", None)
    for choice in choices or []:
        reason = choice.get("finish_reason") if isinstance(choice, Mapping) else getattr(choice, "finish_reason", None)
        if reason:
            return True
    return False


async def _consume(stream: AsyncIterator[Any]) -> float | None:
    """Read a stream to its end: the time of its first chunk; raises if it ended without a finish reason."""
    first: float | None = None
    finished = False
    async for chunk in stream:
        first = first or time.monotonic()
        finished = finished or _finished(chunk)
    if not finished:
        raise TruncatedStreamError("the stream ended without a finish reason")
    return first


def _router_send(router: Any) -> Send:
    async def send(kind: str, payload: Mapping[str, Any]) -> float | None:
        body = {k: v for k, v in payload.items() if k != "model"}
        if kind == "stream":
            return await _consume(await router.acompletion(model=GROUP, stream=True, **body))
        await router.acompletion(model=GROUP, **body)
        return None

    return send


def _dispatcher_send(d: Dispatcher) -> Send:
    async def send(kind: str, payload: Mapping[str, Any]) -> float | None:
        if kind == "stream":
            return await _consume(d.stream(payload))
        await d.complete(payload)
        return None

    return send


async def _drive(
    send: Send,
    arrivals: Sequence[tuple[float, str]],
    payload: Mapping[str, Any] | Callable[[int], Mapping[str, Any]],
    timeout_s: float,
) -> tuple[list[RequestRecord], float]:
    """Send each request at its planned time (open loop) and record what the caller saw; also the start time.

    ``payload`` is every request's body, or a function of the request's index.
    """
    records: list[RequestRecord] = []
    t0 = time.monotonic()

    async def one(at: float, kind: str, body: Mapping[str, Any]) -> None:
        planned = t0 + at
        sent = time.monotonic()
        first: float | None = None
        error: str | None = None
        try:
            first = await asyncio.wait_for(send(kind, body), timeout_s)
        except Exception as exc:  # every failure is a data point, never a crash of the benchmark
            error = type(exc).__name__
        end = time.monotonic()
        records.append(RequestRecord(at, max(0.0, sent - planned), kind, end - t0,
                                     None if error else end - planned,
                                     None if error or first is None else first - planned, error))  # fmt: skip

    tasks: list[asyncio.Task[None]] = []
    try:
        for i, (at, kind) in enumerate(arrivals):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            tasks.append(asyncio.create_task(one(at, kind, payload(i) if callable(payload) else payload)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return records, t0


def summarise_kill(records: Sequence[RequestRecord], kill_s: float, window_s: float = 2.0) -> dict[str, Any]:
    """What callers saw around a worker's death: errors after it, how long they went on, latency just after.

    An error counts when it ended after the kill (streams cut by it included); ``failures_until_s`` is when
    the last one ended, from the kill: how long callers kept seeing the dead worker.
    """
    failed = [r for r in records if r.error and r.end_s >= kill_s]
    just_after = [r for r in records if kill_s <= r.scheduled_s < kill_s + window_s]
    soon = [r.latency_s * 1000 for r in just_after if r.latency_s is not None]
    ok = [r for r in records if r.error is None]
    return {
        "requests": len(records),
        "ok": len(ok),
        "success_rate": len(ok) / len(records) if records else None,
        "errors_after_kill": len(failed),
        "errors": dict(Counter(r.error for r in records if r.error)),
        "failures_until_s": max(r.end_s for r in failed) - kill_s if failed else None,
        "p99_ms_after_kill": percentile(soon, 99),
        "p50_ms": percentile([r.latency_s * 1000 for r in ok if r.latency_s is not None], 50),
        "p99_ms": percentile([r.latency_s * 1000 for r in ok if r.latency_s is not None], 99),
    }


def summarise_overload(records: Sequence[RequestRecord], wall_s: float) -> dict[str, Any]:
    """Answers, refusals (429) and other errors under overload, and how fast each came."""
    ok = [r.latency_s * 1000 for r in records if r.error is None and r.latency_s is not None]
    refused = [r for r in records if r.error == OverloadedError.__name__]
    refused_ms = [(r.end_s - r.scheduled_s) * 1000 for r in refused]
    return {
        "requests": len(records),
        "ok": len(ok),
        "refused_429": len(refused),
        "other_errors": dict(Counter(r.error for r in records if r.error and r.error != OverloadedError.__name__)),
        "p50_ms": percentile(ok, 50),
        "p99_ms": percentile(ok, 99),
        "max_ms": max(ok) if ok else None,
        "refusal_p50_ms": percentile(refused_ms, 50),
        "wall_s": wall_s,
    }


async def _latency(pool: WorkerPool, cfg: BenchConfig, litellm: Any) -> dict[str, Any]:
    names = HETEROGENEOUS
    rate = cfg.litellm_load * pool.capacity_rps(names)
    schedule = poisson_schedule(rate, cfg.warmup_s + cfg.litellm_s, random.Random(cfg.seed + 404))
    arrivals = [(at, "stream") for at in schedule]
    payload = chat_payload(cfg.max_tokens)
    workers = [WorkerConfig(url=pool.url(n), name=n, models=[MODEL], max_concurrency=cfg.max_concurrency)
               for n in names]  # fmt: skip
    out: dict[str, Any] = {"workers": list(names), "load": cfg.litellm_load, "target_rps": rate}
    meter = CpuMeter(pool)
    async with Dispatcher(DispatcherConfig(), workers, rng=random.Random(cfg.seed + 5)) as d:
        meter.start()
        records, _ = await _drive(_dispatcher_send(d), arrivals, payload, cfg.drain_timeout_s)
        out["tandem_power_of_two"] = {**summarise_requests(records, cfg.warmup_s, cfg.warmup_s + cfg.litellm_s),
                                      "cpu": meter.stop()}  # fmt: skip
    for strategy in LITELLM_STRATEGIES:
        router = make_router(litellm, pool, names, strategy, num_retries=2, timeout=cfg.drain_timeout_s)
        meter.start()
        records, _ = await _drive(_router_send(router), arrivals, payload, cfg.drain_timeout_s)
        out[f"litellm_{strategy}"] = {**summarise_requests(records, cfg.warmup_s, cfg.warmup_s + cfg.litellm_s),
                                      "cpu": meter.stop()}  # fmt: skip
    return out


async def _overhead_vs_direct(pool: WorkerPool, cfg: BenchConfig, litellm: Any) -> dict[str, Any]:
    url = pool.url("zero")
    payload = chat_payload(cfg.max_tokens)
    worker = WorkerConfig(url=url, name="zero", models=[MODEL], max_concurrency=cfg.max_concurrency)
    router = make_router(litellm, pool, ["zero"], "simple-shuffle", num_retries=0)
    send = _router_send(router)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    async with Dispatcher(DispatcherConfig(), [worker]) as d, httpx.AsyncClient(limits=limits, trust_env=False) as c:

        async def direct() -> None:
            response = await c.post(f"{url}/chat/completions", json={**payload, "stream": False})
            response.raise_for_status()
            response.json()["choices"][0]["message"]

        async def tandem() -> None:
            await d.complete(payload)

        async def lite() -> None:
            await send("complete", payload)

        n = cfg.litellm_overhead_n
        times = await _interleaved({"direct": direct, "tandem": tandem, "litellm": lite}, n, block=25, warmup=20)
    return {
        "tandem": _overhead({"direct": times["direct"], "dispatched": times["tandem"]}, n),
        "litellm": _overhead({"direct": times["direct"], "dispatched": times["litellm"]}, n),
    }


async def _restart(pool: WorkerPool, cfg: BenchConfig) -> None:
    service = pool.spawn(KILL_VICTIM)
    try:
        await asyncio.to_thread(wait_http, pool.health_url(KILL_VICTIM), service, cfg.startup_timeout_s)
    except ServiceError as exc:
        raise BenchError(str(exc)) from exc


async def _kill_run(pool: WorkerPool, cfg: BenchConfig, send: Send) -> dict[str, Any]:
    rng = random.Random(cfg.seed + 808)
    rate = cfg.kill_load * pool.capacity_rps(KILL_POOL)
    schedule = poisson_schedule(rate, cfg.litellm_kill_s, rng)
    arrivals = [(at, "complete" if rng.random() < 0.5 else "stream") for at in schedule]

    async def killer() -> float:
        await asyncio.sleep(cfg.litellm_kill_at_s)
        pool.kill(KILL_VICTIM)
        return time.monotonic()

    kill_task = asyncio.create_task(killer())
    records, t0 = await _drive(send, arrivals, chat_payload(cfg.max_tokens), cfg.drain_timeout_s)
    killed_at = await kill_task
    result = summarise_kill(records, killed_at - t0)
    await _restart(pool, cfg)
    return {"target_rps": rate, "kill_s": killed_at - t0, **result}


async def _kills(pool: WorkerPool, cfg: BenchConfig, litellm: Any) -> dict[str, Any]:
    workers = [WorkerConfig(url=pool.url(n), name=n, models=[MODEL], max_concurrency=cfg.max_concurrency)
               for n in KILL_POOL]  # fmt: skip
    dcfg = DispatcherConfig(health_interval_s=cfg.drill_health_interval_s)
    out: dict[str, Any] = {"workers": list(KILL_POOL), "victim": KILL_VICTIM, "load": cfg.kill_load}
    async with Dispatcher(dcfg, workers, rng=random.Random(cfg.seed + 6)) as d:
        out["tandem_power_of_two"] = await _kill_run(pool, cfg, _dispatcher_send(d))
    router = make_router(litellm, pool, KILL_POOL, "simple-shuffle", num_retries=2, timeout=cfg.drain_timeout_s)
    out["litellm_simple-shuffle"] = await _kill_run(pool, cfg, _router_send(router))
    return out


async def _overloads(pool: WorkerPool, cfg: BenchConfig, litellm: Any) -> dict[str, Any]:
    rate = cfg.litellm_overload * pool.capacity_rps(KILL_POOL)
    schedule = poisson_schedule(rate, cfg.litellm_overload_s, random.Random(cfg.seed + 909))
    arrivals = [(at, "complete") for at in schedule]
    payload = chat_payload(cfg.max_tokens)
    # One request per slot in flight: the excess waits in the dispatcher's bounded queue, not inside the workers.
    workers = [WorkerConfig(url=pool.url(n), name=n, models=[MODEL], max_concurrency=cfg.slots) for n in KILL_POOL]
    dcfg = DispatcherConfig(max_queue=cfg.overload_queue)
    out: dict[str, Any] = {"workers": list(KILL_POOL), "offered": cfg.litellm_overload, "target_rps": rate,
                           "queue": cfg.overload_queue}  # fmt: skip
    async with Dispatcher(dcfg, workers, rng=random.Random(cfg.seed + 7)) as d:
        t = time.monotonic()
        records, _ = await _drive(_dispatcher_send(d), arrivals, payload, cfg.drain_timeout_s)
        out["tandem_power_of_two"] = summarise_overload(records, time.monotonic() - t)
    router = make_router(litellm, pool, KILL_POOL, "least-busy", num_retries=2, timeout=cfg.drain_timeout_s)
    t = time.monotonic()
    records, _ = await _drive(_router_send(router), arrivals, payload, cfg.drain_timeout_s)
    out["litellm_least-busy"] = summarise_overload(records, time.monotonic() - t)
    return out


async def run_litellm_comparison(
    pool: WorkerPool, cfg: BenchConfig, step: Callable[[str], None] = lambda _s: None
) -> dict[str, Any]:
    """The four measurements (module docstring); ``{"skipped": reason}`` when LiteLLM is not installed."""
    if not litellm_available():
        return {"skipped": "litellm is not installed (it is in the dev dependency group: `uv sync`)"}
    t = time.perf_counter()
    litellm = await asyncio.to_thread(_import_litellm)
    out: dict[str, Any] = {"litellm_version": _version(), "import_s": time.perf_counter() - t}
    step("LiteLLM Router vs dispatcher · latency (heterogeneous workers)")
    out["latency"] = await _latency(pool, cfg, litellm)
    step("LiteLLM Router vs dispatcher · overhead against the zero-delay worker")
    out["overhead"] = await _overhead_vs_direct(pool, cfg, litellm)
    step(f"LiteLLM Router vs dispatcher · {KILL_VICTIM} killed mid-run")
    out["kill"] = await _kills(pool, cfg, litellm)
    step(f"LiteLLM Router vs dispatcher · {cfg.litellm_overload:g}× capacity offered")
    out["overload"] = await _overloads(pool, cfg, litellm)
    out["settings"] = {"num_retries": 2, "timeout_s": cfg.drain_timeout_s, "tandem_max_attempts": 3}
    return out


def _version() -> str | None:
    try:
        return importlib.metadata.version("litellm")
    except importlib.metadata.PackageNotFoundError:
        return None
