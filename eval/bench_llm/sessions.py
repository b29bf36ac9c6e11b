"""Multi-turn sessions on workers with a SIMULATED prefix cache: does session affinity pay?

Each session is a conversation: a system prompt, a first turn carrying retrieved product cards,
then follow-ups, each sent (streamed, with the session's id in OpenAI's ``user`` field) after
the previous answer and a pause. The workers (``cache-1…3``, fast lognormal delay models) keep a
SIMULATED prefix cache (:class:`llms.worker.simulated.PrefixCache`): an uncached prompt word costs
``prefill_ms`` before the first token; the previous turn's prompt, when this worker served it and
still holds it, is free. Every answer starts with ``prefix cache C/P``, so the hit rate is read
from what the workers did, not modelled here. Sessions start as a Poisson process; the same
schedule runs under each policy, with a nonce in every prompt so no policy inherits another's cache.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eval.bench_llm.config import CACHE_POOL, MODEL, BenchConfig
from eval.bench_llm.measure import percentile, traffic_shares
from eval.bench_llm.workers import CpuMeter, WorkerPool
from llms.config import BalancingPolicy, DispatcherConfig, WorkerConfig
from llms.dispatcher import Dispatcher

__all__ = ["SESSION_POLICIES", "TurnRecord", "cache_note", "run_sessions", "session_schedule", "summarise_turns"]

SESSION_POLICIES: tuple[BalancingPolicy, ...] = (
    BalancingPolicy.ROUND_ROBIN,
    BalancingPolicy.POWER_OF_TWO,
    BalancingPolicy.AFFINITY,
)
_NOTE = re.compile(r"prefix cache (\d+)/(\d+)")


def cache_note(text: str) -> tuple[int, int] | None:
    """(cached, prompt) words from a SIMULATED worker's answer, or ``None`` when it carries no note."""
    found = _NOTE.search(text)
    return (int(found.group(1)), int(found.group(2))) if found else None


def session_schedule(count: int, rate: float, rng: random.Random) -> list[float]:
    """Start times of ``count`` sessions arriving as a Poisson process of ``rate`` per second."""
    if count < 1 or rate <= 0:
        raise ValueError("need at least one session and a positive rate")
    t, out = 0.0, []
    for _ in range(count):
        t += rng.expovariate(rate)
        out.append(t)
    return out


@dataclass(frozen=True)
class TurnRecord:
    """One turn as its session saw it; times in seconds (latency and TTFT from the moment it was sent)."""

    session: int
    turn: int
    latency_s: float | None
    ttft_s: float | None
    cached: int | None  # prompt words the worker found in its prefix cache
    prompt: int | None
    error: str | None = None


def _text(rng: random.Random, words: int, tag: str) -> str:
    return " ".join(f"{tag}{rng.randrange(1_000_000)}" for _ in range(words))


async def _session(
    d: Dispatcher, cfg: BenchConfig, sid: int, start_at: float, nonce: str, t0: float, out: list[TurnRecord]
) -> None:
    rng = random.Random(f"{nonce}:{sid}")
    await asyncio.sleep(max(0.0, t0 + start_at - time.monotonic()))
    system = f"{nonce} You advise B2B buyers on products. " + _text(rng, cfg.system_words, "s")
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": f"session {sid} cards: " + _text(rng, cfg.context_words, "p")},
    ]
    for turn in range(cfg.session_turns):
        payload = {"model": MODEL, "messages": list(messages), "max_tokens": cfg.max_tokens, "user": f"{nonce}-{sid}"}
        sent = time.monotonic()
        first: float | None = None
        parts: list[str] = []
        error: str | None = None
        try:
            async for chunk in d.stream(payload):
                first = first or time.monotonic()
                parts += [c.get("delta", {}).get("content") or "" for c in chunk.get("choices", [])]
        except Exception as exc:  # a failure is a data point of the benchmark, never a crash of it
            error = type(exc).__name__
        end = time.monotonic()
        note = cache_note("".join(parts))
        ttft = None if error or first is None else first - sent
        cached, prompt = note if note else (None, None)
        out.append(TurnRecord(sid, turn, None if error else end - sent, ttft, cached, prompt, error))
        messages += [
            {"role": "assistant", "content": "".join(parts)},
            {"role": "user", "content": _text(rng, cfg.followup_words, "f")},
        ]
        await asyncio.sleep(rng.expovariate(1 / cfg.think_s) if cfg.think_s > 0 else 0)


def summarise_turns(records: Sequence[TurnRecord], wall_s: float) -> dict[str, Any]:
    """Prefix-cache hit rates, latency and TTFT percentiles and errors of one policy's sessions."""
    ok = [r for r in records if r.error is None]
    noted = [r for r in ok if r.cached is not None and r.prompt]
    follow = [r for r in noted if r.turn > 0]
    latency = [r.latency_s * 1000 for r in ok if r.latency_s is not None]
    ttft = [r.ttft_s * 1000 for r in ok if r.ttft_s is not None]
    errors: dict[str, int] = {}
    for r in records:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": dict(sorted(errors.items())),
        "token_hit_rate": sum(r.cached or 0 for r in noted) / max(1, sum(r.prompt or 0 for r in noted)),
        # A follow-up hits when its worker still held at least half its prompt (the previous turns).
        "followup_hit_rate": sum(1 for r in follow if (r.cached or 0) * 2 >= (r.prompt or 0)) / len(follow)
        if follow
        else None,
        "throughput_rps": len(ok) / wall_s if wall_s > 0 else None,
        "p50_ms": percentile(latency, 50),
        "p99_ms": percentile(latency, 99),
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
    }


async def run_sessions(
    pool: WorkerPool, cfg: BenchConfig, policy: BalancingPolicy, tick: Callable[[float], None] = lambda _t: None
) -> dict[str, Any]:
    """One policy's run of the sessions scenario on ``CACHE_POOL`` (a fresh dispatcher)."""
    starts = session_schedule(cfg.session_count, cfg.session_rate, random.Random(cfg.seed + 31))
    nonce = f"{policy.value}-{cfg.seed}"
    workers = [
        WorkerConfig(url=pool.url(n), name=n, models=[MODEL], max_concurrency=cfg.max_concurrency) for n in CACHE_POOL
    ]
    records: list[TurnRecord] = []
    meter = CpuMeter(pool)
    async with Dispatcher(DispatcherConfig(policy=policy), workers, rng=random.Random(cfg.seed + 3)) as d:
        before = {w.name: w.requests for w in d.workers()}
        t0 = time.monotonic()
        meter.start()
        tasks = [asyncio.create_task(_session(d, cfg, i, at, nonce, t0, records)) for i, at in enumerate(starts)]
        try:
            while not all(t.done() for t in tasks):
                await asyncio.wait(tasks, timeout=0.25)
                tick(time.monotonic() - t0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.monotonic() - t0
        cpu = meter.stop()
        shares = traffic_shares(before, {w.name: w.requests for w in d.workers()})
    return {
        "policy": policy.value,
        "workers": list(CACHE_POOL),
        "sessions": cfg.session_count,
        "turns": cfg.session_turns,
        "wall_s": wall,
        **summarise_turns(records, wall),
        "shares": shares,
        "cpu": cpu,
    }
