"""The benchmark's load: open-loop Poisson runs through a fresh :class:`Dispatcher`, and the kill drill.

:func:`run_load` replays a seeded Poisson schedule at a fraction of a pool's capacity through
one balancing policy and summarises what the callers saw; :func:`kill_drill` SIGKILLs one of
three workers under steady mixed load, restarts it on its port and times how long the
dispatcher kept sending it traffic and how soon it took traffic again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from eval.bench_llm.config import KILL_POOL, KILL_VICTIM, MODEL, BenchConfig, BenchError, Sample
from eval.bench_llm.measure import (
    RequestRecord,
    kill_timeline,
    max_share_ratio,
    mean_in_flight,
    percentile,
    poisson_schedule,
    summarise_requests,
    traffic_shares,
)
from eval.bench_llm.workers import CpuMeter, WorkerPool
from llms.config import BalancingPolicy, DispatcherConfig, WorkerConfig
from llms.dispatcher import Dispatcher

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["chat_payload", "kill_drill", "run_load"]


def chat_payload(max_tokens: int, text: str = "why does this jacket suit a wholesale order") -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


def _counts(d: Dispatcher) -> dict[str, int]:
    return {w.name: w.requests for w in d.workers()}


def _counter_total(registry: CollectorRegistry, sample_name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Values of a Prometheus counter's samples by label set (e.g. ``tandem_llm_retries_total``)."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == sample_name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def _one(
    d: Dispatcher, kind: str, payload: Mapping[str, Any], t0: float, at: float, out: list[RequestRecord]
) -> None:
    """Send one request at its planned time ``t0 + at`` and record what the caller saw."""
    planned = t0 + at
    sent = time.monotonic()
    first: float | None = None
    worker: str | None = None
    error: str | None = None
    try:
        if kind == "stream":
            async for _chunk in d.stream(payload):
                if first is None:
                    first = time.monotonic()
        else:
            done = await d.complete(payload)
            worker = done.worker
    except Exception as exc:  # every failure is a data point of the benchmark, never a crash of it
        error = type(exc).__name__
    end = time.monotonic()
    out.append(
        RequestRecord(
            scheduled_s=at,
            lag_s=max(0.0, sent - planned),
            kind=kind,
            end_s=end - t0,
            latency_s=None if error else end - planned,
            ttft_s=None if error or first is None else first - planned,
            error=error,
            worker=worker,
        )
    )


async def _sampler(
    d: Dispatcher, t0: float, interval_s: float, out: list[Sample], tick: Callable[[float], None]
) -> None:
    while True:
        now = time.monotonic()
        out.append((now - t0, {w.name: (w.requests, w.in_flight, w.healthy) for w in d.workers()}))
        tick(now - t0)
        await asyncio.sleep(interval_s)


async def _drain(tasks: Sequence[asyncio.Task[None]], timeout_s: float) -> int:
    """Wait for the requests still running; cancel what outlives ``timeout_s`` (returns how many)."""
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


async def _cancel_all(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel what is still running and collect every outcome (no "exception was never retrieved" noise)."""
    for future in futures:
        if not future.done():
            future.cancel()
    await asyncio.gather(*futures, return_exceptions=True)


async def run_load(
    pool: WorkerPool,
    names: Sequence[str],
    *,
    policy: BalancingPolicy,
    load: float,
    duration_s: float,
    cfg: BenchConfig,
    seed: int,
    tick: Callable[[float], None] = lambda _t: None,
) -> dict[str, Any]:
    """One open-loop run: a fresh dispatcher, Poisson arrivals at ``load`` × capacity, every request streamed."""
    gc.collect()  # the previous run's garbage, collected now rather than inside this run's window
    capacity = pool.capacity_rps(names)
    rate = load * capacity
    schedule = poisson_schedule(rate, cfg.warmup_s + duration_s, random.Random(seed))
    payload = chat_payload(cfg.max_tokens)
    workers = [
        WorkerConfig(url=pool.url(n), name=n, models=[MODEL], max_concurrency=cfg.max_concurrency) for n in names
    ]
    records: list[RequestRecord] = []
    samples: list[Sample] = []
    meter = CpuMeter(pool)
    marks: dict[str, dict[str, int]] = {}
    cpu: dict[str, float] = {}
    end_s = cfg.warmup_s + duration_s
    async with Dispatcher(DispatcherConfig(policy=policy), workers, rng=random.Random(seed + 1)) as d:
        t0 = time.monotonic()

        async def mark(name: str, at: float, action: Callable[[], Any]) -> None:
            await _sleep_until(t0 + at)
            marks[name] = _counts(d)
            action()

        sampler = asyncio.create_task(_sampler(d, t0, cfg.sample_interval_s, samples, tick))
        marker = asyncio.gather(mark("start", cfg.warmup_s, meter.start), mark("end", end_s, lambda: None))
        tasks: list[asyncio.Task[None]] = []
        try:
            for at in schedule:
                await _sleep_until(t0 + at)
                tasks.append(asyncio.create_task(_one(d, "stream", payload, t0, at, records)))
            await marker
            cpu = meter.stop()
            cancelled = await _drain(tasks, cfg.drain_timeout_s)
        finally:  # also on Ctrl-C: nothing of this run may outlive it
            await _cancel_all([sampler, marker, *tasks])
        retries = sum(_counter_total(d.metrics.registry, "tandem_llm_retries_total").values())
    summary = summarise_requests(records, cfg.warmup_s, end_s)
    shares = traffic_shares(marks["start"], marks["end"])
    return {
        "policy": policy.value,
        "load": load,
        "workers": list(names),
        "capacity_rps": capacity,
        "target_rps": rate,
        "warmup_s": cfg.warmup_s,
        "duration_s": duration_s,
        **summary,
        "shares": shares,
        "max_share": max_share_ratio(shares) if sum(shares.values()) else None,
        "mean_in_flight": mean_in_flight(samples, cfg.warmup_s, end_s),
        "retries": int(retries),
        "cancelled_at_drain": cancelled,
        "cpu": cpu,
    }


@dataclass
class _Drill:
    """What the kill drill records as it runs: requests, dispatcher snapshots and the times of its events."""

    t0: float
    records: list[RequestRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)
    # The dispatcher's request counters at the restart: the victim's growing past its count means traffic again.
    restart_count: dict[str, int] = field(default_factory=dict)


async def _kill_and_restart(
    pool: WorkerPool, cfg: BenchConfig, d: Dispatcher, probe: httpx.AsyncClient, drill: _Drill
) -> None:
    """SIGKILL the victim at ``kill_at_s``, restart it ``restart_after_s`` later, wait until it can serve."""
    victim = KILL_VICTIM
    await _sleep_until(drill.t0 + cfg.kill_at_s)
    drill.events["kill_s"] = time.monotonic() - drill.t0
    pool.kill(victim)
    await _sleep_until(drill.t0 + cfg.kill_at_s + cfg.restart_after_s)
    drill.restart_count.update(_counts(d))
    drill.events["restart_s"] = time.monotonic() - drill.t0
    service = pool.spawn(victim)
    while True:  # our own probe: when the new process can serve, whatever the dispatcher knows
        if not service.alive():
            raise BenchError(f"the restarted worker {victim} exited; its log: {service.log}")
        with contextlib.suppress(httpx.HTTPError):
            if (await probe.get(pool.health_url(victim), timeout=0.5)).status_code == 200:
                drill.events["ready_s"] = time.monotonic() - drill.t0
                return
        await asyncio.sleep(0.05)


def _victim_back(d: Dispatcher, drill: _Drill) -> bool:
    """The restarted victim has been sent a request since its restart."""
    before = drill.restart_count
    return bool(before) and _counts(d).get(KILL_VICTIM, 0) > before.get(KILL_VICTIM, 0)


async def _send_drill(
    d: Dispatcher,
    cfg: BenchConfig,
    drill: _Drill,
    arrivals: Sequence[tuple[float, str]],
    control: asyncio.Task[None],
    tasks: list[asyncio.Task[None]],
) -> None:
    """Send the drill's requests at their planned times, until ``kill_tail_s`` after the victim takes traffic again."""
    payload = chat_payload(cfg.max_tokens)
    events = drill.events
    for at, kind in arrivals:
        if control.done() and control.exception() is not None:
            break
        back = events.get("back_s")
        if back is None and _victim_back(d, drill):
            back = events["back_s"] = time.monotonic() - drill.t0  # rough; the sampled timeline is reported
        if at >= cfg.kill_s and back is not None and at >= back + cfg.kill_tail_s:
            break
        await _sleep_until(drill.t0 + at)
        tasks.append(asyncio.create_task(_one(d, kind, payload, drill.t0, at, drill.records)))


def _error_kinds(d: Dispatcher) -> dict[str, int]:
    """The dispatcher's worker errors by kind (connect, timeout, ...)."""
    error_kinds: Counter[str] = Counter()
    for labels, value in _counter_total(d.metrics.registry, "tandem_llm_errors_total").items():
        error_kinds[dict(labels).get("kind", "?")] += int(value)
    return dict(error_kinds)


def _by_kind(records: Sequence[RequestRecord]) -> dict[str, Any]:
    ok = [r for r in records if r.error is None]
    return {
        kind: {
            "requests": sum(1 for r in records if r.kind == kind),
            "ok": sum(1 for r in ok if r.kind == kind),
            "p50_ms": percentile([r.latency_s * 1000 for r in ok if r.kind == kind and r.latency_s], 50),
            "p99_ms": percentile([r.latency_s * 1000 for r in ok if r.kind == kind and r.latency_s], 99),
        }
        for kind in ("complete", "stream")
    }


def _drill_result(cfg: BenchConfig, drill: _Drill, observed: Mapping[str, Any]) -> dict[str, Any]:
    """The kill drill's figures: success, errors, retries and the victim's timeline (``observed``: the rest)."""
    records = drill.records
    kill_s = drill.events.get("kill_s", cfg.kill_at_s)
    restart_s = drill.events.get("restart_s", cfg.kill_at_s + cfg.restart_after_s)
    timeline = kill_timeline(drill.samples, KILL_VICTIM, kill_s, restart_s)
    ready_s = drill.events.get("ready_s")
    ok = [r for r in records if r.error is None]
    return {
        "workers": list(KILL_POOL),
        "victim": KILL_VICTIM,
        "policy": observed["policy"],
        "health_interval_s": observed["health_interval_s"],
        "load": cfg.kill_load,
        "capacity_rps": observed["capacity_rps"],
        "target_rps": observed["target_rps"],
        "duration_s": observed["duration_s"],
        "requests": len(records),
        "ok": len(ok),
        "success_rate": len(ok) / len(records) if records else None,
        "by_kind": _by_kind(records),
        "errors": dict(Counter(r.error for r in records if r.error)),
        "worker_error_kinds": observed["worker_error_kinds"],
        "retries": observed["retries"],
        "kill_s": kill_s,
        "restart_s": restart_s,
        "ready_after_restart_s": ready_s - restart_s if ready_s is not None else None,
        **timeline,
        "return_after_ready_s": (
            timeline["return_s"] + restart_s - ready_s
            if timeline["return_s"] is not None and ready_s is not None
            else None
        ),
        "cancelled_at_drain": observed["cancelled_at_drain"],
        "cpu": observed["cpu"],
        "wall_t0": observed["wall_t0"],
        "samples": [
            [round(t, 3), {n: v[0] for n, v in s.items()}, {n: v[2] for n, v in s.items()}] for t, s in drill.samples
        ],
    }


async def kill_drill(pool: WorkerPool, cfg: BenchConfig, tick: Callable[[float], None]) -> dict[str, Any]:
    """Three equal workers under steady mixed load; one is SIGKILLed, then restarted on its port (package docstring)."""
    capacity = pool.capacity_rps(KILL_POOL)
    rate = cfg.kill_load * capacity
    rng = random.Random(cfg.seed + 7919)
    schedule = poisson_schedule(rate, cfg.kill_max_s, rng)
    # Half ranker-like (one JSON answer), half explainer-like (a stream), in random order.
    kinds = ["complete" if rng.random() < 0.5 else "stream" for _ in schedule]
    dcfg = DispatcherConfig(health_interval_s=cfg.drill_health_interval_s)  # the default policy: power of two
    workers = [
        WorkerConfig(url=pool.url(n), name=n, models=[MODEL], max_concurrency=cfg.max_concurrency) for n in KILL_POOL
    ]
    meter = CpuMeter(pool)
    async with (
        Dispatcher(dcfg, workers, rng=random.Random(cfg.seed + 2)) as d,
        httpx.AsyncClient(trust_env=False) as probe,
    ):
        drill = _Drill(t0=time.monotonic())
        wall0 = time.time()  # the dispatcher's log records carry wall-clock times
        meter.start()
        sampler = asyncio.create_task(_sampler(d, drill.t0, cfg.sample_interval_s, drill.samples, tick))
        control = asyncio.create_task(_kill_and_restart(pool, cfg, d, probe, drill))
        tasks: list[asyncio.Task[None]] = []
        try:
            await _send_drill(d, cfg, drill, list(zip(schedule, kinds, strict=True)), control, tasks)
            ended_s = time.monotonic() - drill.t0
            cancelled = await _drain(tasks, cfg.drain_timeout_s)
            failure = control.exception() if control.done() else None
            if failure is not None:
                raise BenchError(f"kill drill: {failure}") from failure
        finally:  # also on Ctrl-C: nothing of this drill may outlive it (a still-polling controller included)
            await _cancel_all([sampler, control, *tasks])
        cpu = meter.stop()
        retries = sum(_counter_total(d.metrics.registry, "tandem_llm_retries_total").values())
        error_kinds = _error_kinds(d)
    observed = {
        "policy": dcfg.policy.value,
        "health_interval_s": dcfg.health_interval_s,
        "capacity_rps": capacity,
        "target_rps": rate,
        "duration_s": ended_s,
        "worker_error_kinds": error_kinds,
        "retries": int(retries),
        "cancelled_at_drain": cancelled,
        "cpu": cpu,
        "wall_t0": wall0,
    }
    return _drill_result(cfg, drill, observed)
