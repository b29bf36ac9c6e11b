"""The soak: ``tandem serve`` under mixed open-loop traffic at half its measured capacity, for many minutes.

1. A local image server and ``tandem serve`` (with its embedded LLM worker) start as
   subprocesses; the driver waits until ``/readyz`` reports retrieval and the LLM up.
2. **Capacity**, per kind of work: ``capacity_users`` clients send REST requests (photo, text,
   bad) back to back for ``capacity_s``, then chat turns for ``chat_capacity_s``; the mix's
   capacity is their weighted harmonic combination (:func:`mix_capacity`). One closed loop over
   the whole mix would overstate it: its users spend their time on chat turns but count mostly
   the quick REST answers, so "half of capacity" once ran the single LLM worker at ~90 %.
3. **Soak**: Poisson arrivals at ``load`` × capacity for ``minutes``, each request recorded
   (planned arrival, latency, status, whether it was the expected answer); the RSS and open
   file descriptors of every process are sampled meanwhile (:class:`ProcessMonitor`).

Open-loop on purpose: a closed loop (Locust's users) slows its own arrivals when the service
slows, which hides exactly the drift a soak is looking for.

Example:
    >>> results = run_soak(settings, SoakConfig(minutes=30), work_dir=Path("/tmp/soak"))  # doctest: +SKIP
    >>> results["summary"]["unexpected"]  # doctest: +SKIP
    0
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from eval.bench_llm.measure import poisson_schedule
from eval.loadtest.run import pick_ids
from eval.process import Service, free_port, venv_script, wait_http, wait_llm_ready
from eval.soak.monitor import ProcessMonitor
from eval.soak.traffic import Planned, TrafficMix, expected_status

if TYPE_CHECKING:
    from api.settings import Settings

__all__ = ["SoakConfig", "SoakRecord", "measure_capacities", "mix_capacity", "only", "run_soak"]

_IMAGE_SERVER = "import sys; from eval.loadtest import serve_images; serve_images(sys.argv[1], int(sys.argv[2]))"
QUERIES = ("navy formal shirts for men", "black running shoes", "women's red kurta", "leather wallet",
           "white sports t-shirt", "blue denim jeans for women", "analog watch for men", "pink handbag",
           "casual sandals", "green ethnic dupatta")  # fmt: skip


@dataclass(frozen=True)
class SoakConfig:
    """How long, how hard, and with which mix."""

    minutes: float = 30.0
    load: float = 0.5  # of the measured capacity
    capacity_s: float = 30.0  # REST kinds, back to back
    chat_capacity_s: float = 120.0  # chat kinds: a turn takes seconds, so many seconds for enough of them
    capacity_users: int = 4
    chat_capacity_users: int = 2
    monitor_every_s: float = 5.0
    ids: int = 200
    seed: int = 0
    startup_timeout_s: float = 900.0
    request_timeout_s: float = 120.0


@dataclass(frozen=True)
class SoakRecord:
    """One request as the driver saw it; times in seconds from the soak's start."""

    t_s: float
    kind: str
    latency_ms: float | None
    status: int | None
    expected: bool
    label: str = ""
    error: str | None = None


@dataclass
class _Stack:
    services: list[Service] = field(default_factory=list)
    key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    base_url: str = ""
    image_base: str = ""


async def send(
    client: httpx.AsyncClient, planned: Planned, key: str, timeout_s: float
) -> tuple[int | None, str | None]:
    """One request (a stream read to its end); its status, or the error that stopped it."""
    headers = {"X-API-Key": "wrong-" + key if planned.wrong_key else key}
    try:
        if planned.stream:
            async with client.stream("POST", planned.path, json=planned.body, headers=headers, timeout=timeout_s) as r:
                async for _ in r.aiter_bytes():
                    pass
                return r.status_code, None
        response = await client.post(planned.path, json=planned.body, headers=headers, timeout=timeout_s)
        return response.status_code, None
    except httpx.HTTPError as exc:
        return None, type(exc).__name__


async def _timed(client: httpx.AsyncClient, planned: Planned, key: str, cfg: SoakConfig, t0: float) -> SoakRecord:
    start = time.monotonic()
    status, error = await send(client, planned, key, cfg.request_timeout_s)
    latency = (time.monotonic() - start) * 1000
    return SoakRecord(round(start - t0, 3), planned.name, round(latency, 1), status, expected_status(planned, status),
                      planned.label, error)  # fmt: skip


REST_KINDS = ("photo", "text", "bad")
CHAT_KINDS = ("chat", "chat_stream")


def mix_capacity(weights: dict[str, float], capacities: dict[str, float]) -> float:
    """Requests a second of the whole mix, from each group's capacity: ``1 / Σ share_g / capacity_g``.

    Exact when the groups share one resource (here: 2 cores run the API and the LLM worker both),
    and on the safe side when they do not. ``capacities`` maps a group name ("rest", "chat") to
    its measured answers per second; ``weights`` are the mix's kind weights.

    Example:
        >>> round(mix_capacity({"text": 0.8, "chat": 0.2}, {"rest": 20.0, "chat": 0.2}), 3)
        0.962
    """
    total = sum(weights.values())
    load = 0.0
    for group, kinds in (("rest", REST_KINDS), ("chat", CHAT_KINDS)):
        share = sum(weights.get(k, 0.0) for k in kinds) / total
        if share > 0:
            if capacities.get(group, 0.0) <= 0:
                raise ValueError(f"no {group} request was answered while measuring capacity")
            load += share / capacities[group]
    return 1.0 / load


async def measure_capacity(
    base_url: str, key: str, mix: TrafficMix, cfg: SoakConfig, *, seconds: float | None = None, users: int | None = None
) -> float:
    """Expected answers per second of ``mix`` with ``users`` clients sending back to back (a closed loop)."""
    done = 0
    t0 = time.monotonic()
    deadline = t0 + (cfg.capacity_s if seconds is None else seconds)

    async def user(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=base_url) as client:
            while time.monotonic() < deadline:
                record = await _timed(client, mix.draw(rng), key, cfg, t0)
                done += record.expected

    await asyncio.gather(*(user(cfg.seed * 100 + i) for i in range(cfg.capacity_users if users is None else users)))
    return done / (time.monotonic() - t0)


def only(mix: TrafficMix, kinds: Sequence[str]) -> TrafficMix:
    """The same mix restricted to ``kinds`` (their weights kept relative to each other)."""
    return replace(mix, weights=tuple((k, w) for k, w in mix.weights if k in kinds))


async def measure_capacities(base_url: str, key: str, mix: TrafficMix, cfg: SoakConfig) -> dict[str, float]:
    """Answers per second of the REST kinds and of the chat kinds, each measured on its own."""
    present = {k for k, w in mix.weights if w > 0}
    capacities: dict[str, float] = {}
    if present & set(REST_KINDS):
        capacities["rest"] = await measure_capacity(base_url, key, only(mix, REST_KINDS), cfg)
    if present & set(CHAT_KINDS):
        chat = only(mix, CHAT_KINDS)
        capacities["chat"] = await measure_capacity(
            base_url, key, chat, cfg, seconds=cfg.chat_capacity_s, users=cfg.chat_capacity_users
        )
    return capacities


async def open_loop(
    base_url: str, key: str, mix: TrafficMix, rate_rps: float, cfg: SoakConfig, tick: Callable[[float], None]
) -> list[SoakRecord]:
    """Poisson arrivals at ``rate_rps`` for ``cfg.minutes``; every request recorded."""
    rng = random.Random(cfg.seed)
    schedule = poisson_schedule(rate_rps, cfg.minutes * 60, rng)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:
        t0 = time.monotonic()
        tasks: list[asyncio.Task[SoakRecord]] = []
        for at in schedule:
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_timed(client, mix.draw(rng), key, cfg, t0)))
            tick(at)
        return list(await asyncio.gather(*tasks))


def _start(stack: _Stack, settings: Settings, cfg: SoakConfig, work: Path) -> list[str]:
    images = settings.catalogue.path / "images"
    ids = pick_ids(images, cfg.ids, cfg.seed)
    port = free_port()
    stack.services.append(Service("image server", [sys.executable, "-c", _IMAGE_SERVER, str(images), str(port)],
                                  work / "image_server.log"))  # fmt: skip
    stack.image_base = f"http://127.0.0.1:{port}"
    wait_http(f"{stack.image_base}/{ids[0]}.jpg", stack.services[-1], 30)
    api_port = free_port()
    env = {
        **os.environ,
        "TANDEM_API__KEYS": stack.key,
        "TANDEM_STORAGE__URL_ALLOW": "127.0.0.1",
        "TANDEM_API__RATE_PER_S": "0",
    }
    argv = [venv_script("tandem"), "serve", "--host", "127.0.0.1", "--port", str(api_port)]
    stack.services.append(Service("api", argv, work / "api.log", env))
    stack.base_url = f"http://127.0.0.1:{api_port}"
    wait_http(f"{stack.base_url}/readyz", stack.services[-1], cfg.startup_timeout_s, {"X-API-Key": stack.key})
    with httpx.Client(base_url=stack.base_url, headers={"X-API-Key": stack.key}, timeout=10) as client:
        wait_llm_ready(client, cfg.startup_timeout_s, alive=stack.services[-1].alive, poll_s=2.0)
    return ids


def run_soak(
    settings: Settings,
    cfg: SoakConfig,
    *,
    work_dir: Path,
    tick: Callable[[str, float, float], None] | None = None,
) -> dict[str, Any]:
    """Start the stack, measure capacity, soak at ``cfg.load`` × capacity: the raw results (:mod:`eval.soak.report`)."""
    report = tick or (lambda stage, done, total: None)
    work_dir.mkdir(parents=True, exist_ok=True)
    stack = _Stack()
    try:
        ids = _start(stack, settings, cfg, work_dir)
        mix = TrafficMix(stack.image_base, ids, QUERIES)
        measuring = cfg.capacity_s + cfg.chat_capacity_s
        report("capacity", 0, measuring)
        capacities = asyncio.run(measure_capacities(stack.base_url, stack.key, mix, cfg))
        capacity = mix_capacity(dict(mix.weights), capacities)
        report("capacity", measuring, measuring)
        rate = max(0.05, capacity * cfg.load)
        roots = {s.pid: s.name for s in stack.services}
        with ProcessMonitor(roots, every_s=cfg.monitor_every_s) as monitor:
            records = asyncio.run(open_loop(stack.base_url, stack.key, mix, rate, cfg,
                                            lambda at: report("soak", at, cfg.minutes * 60)))  # fmt: skip
        return {"config": asdict(cfg), "capacity_rps": round(capacity, 3), "rate_rps": round(rate, 3),
                "capacity_by_group": {k: round(v, 3) for k, v in capacities.items()},
                "records": [asdict(r) for r in records], "samples": [asdict(s) for s in monitor.samples]}  # fmt: skip
    finally:
        for service in reversed(stack.services):
            service.stop()


def kinds_of(records: Sequence[dict[str, Any]]) -> list[str]:
    """The kinds present, in the mix's order."""
    seen = {r["kind"] for r in records}
    return [k for k in ("photo", "text", "chat", "chat_stream", "bad") if k in seen]
