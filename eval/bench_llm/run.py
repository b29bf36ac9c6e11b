"""Running the benchmark: the progress bars, the order of the scenarios, and :func:`run` from start to report.

:func:`run` starts every worker, waits for them (and for a quiet CPU), measures the
dispatcher's overhead, the heterogeneous and equal-worker runs and the kill drill, stops every
worker whatever happens, assembles the results JSON (headline, targets, CPU use, the
dispatcher's log) and writes the report.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.bench_llm.config import (
    HETEROGENEOUS,
    KILL_POOL,
    KILL_VICTIM,
    POLICIES,
    SCENARIO_NOTES,
    SIMULATED_NOTE,
    BenchConfig,
    WorkerSpec,
    equal_pool,
    worker_specs,
)
from eval.bench_llm.litellm_router import run_litellm_comparison
from eval.bench_llm.load import kill_drill, run_load
from eval.bench_llm.measure import round_floats
from eval.bench_llm.overhead import measure_overhead_end_to_end, measure_overhead_in_process
from eval.bench_llm.real_engines import run_real_engines
from eval.bench_llm.report import write_report
from eval.bench_llm.sessions import SESSION_POLICIES, run_sessions
from eval.bench_llm.targets import check_shape, evaluate_targets, headline_policies
from eval.bench_llm.workers import WorkerPool, dispatcher_log
from eval.machine import machine_info
from eval.process import own_cpu_seconds, progress_display, wait_for_quiet

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ["run"]


class _Bars:
    """Two rich progress bars (steps done, seconds of the current run), or nothing without a console."""

    def __init__(self, progress: Progress | None, steps: int) -> None:
        self.progress = progress
        self._steps: TaskID | None = None
        self._run: TaskID | None = None
        if progress is not None:
            self._steps = progress.add_task("LLM serving benchmark (SIMULATED model)", total=steps)
            self._run = progress.add_task("starting", total=None)

    def step(self, description: str, seconds: float | None) -> None:
        if self.progress is not None and self._run is not None:
            self.progress.update(self._run, description=description, total=seconds, completed=0)

    def tick(self, elapsed_s: float) -> None:
        if self.progress is not None and self._run is not None:
            total = next(t.total for t in self.progress.tasks if t.id == self._run)
            if total is not None and elapsed_s > total:  # a drill that waits for a restart runs over its estimate
                self.progress.update(self._run, total=elapsed_s)
            self.progress.update(self._run, completed=elapsed_s)

    def done(self) -> None:
        if self.progress is not None and self._steps is not None:
            self.progress.advance(self._steps)


async def _measure(
    pool: WorkerPool, cfg: BenchConfig, bars: _Bars, phases: dict[str, float], work: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": [], "equal_runs": []}
    t = time.perf_counter()
    bars.step("dispatcher overhead, in process (instant mock transport)", None)
    out["overhead"] = {"in_process": await measure_overhead_in_process(cfg)}
    bars.done()
    if cfg.e2e_n > 0:
        bars.step("dispatcher overhead, end to end (zero-delay worker)", None)
        out["overhead"]["end_to_end"] = await measure_overhead_end_to_end(pool, cfg)
        bars.done()
    phases["overhead_s"], t = time.perf_counter() - t, time.perf_counter()
    # Policies interleaved within a load level: a neighbour's CPU burst then hits all three alike.
    for i, load in enumerate(cfg.loads):
        for policy in POLICIES:
            seconds = cfg.warmup_s + cfg.duration_of[load]
            bars.step(f"heterogeneous · {policy.value} · {load:.0%} load", seconds)
            result = await run_load(
                pool, HETEROGENEOUS, policy=policy, load=load, duration_s=cfg.duration_of[load], cfg=cfg,
                seed=cfg.seed + 100 * i, tick=bars.tick,
            )  # fmt: skip
            out["runs"].append(result)
            bars.done()
    phases["heterogeneous_s"], t = time.perf_counter() - t, time.perf_counter()
    for policy in POLICIES:
        bars.step(f"equal workers · {policy.value} · {cfg.equal_load:.0%} load", cfg.warmup_s + cfg.equal_s)
        result = await run_load(
            pool, equal_pool(cfg), policy=policy, load=cfg.equal_load, duration_s=cfg.equal_s, cfg=cfg,
            seed=cfg.seed + 5000, tick=bars.tick,
        )  # fmt: skip
        out["equal_runs"].append(result)
        bars.done()
    phases["equal_s"], t = time.perf_counter() - t, time.perf_counter()
    bars.step(f"kill one of three · SIGKILL {KILL_VICTIM} at {cfg.kill_at_s:g} s", cfg.kill_s)
    out["kill_drill"] = await kill_drill(pool, cfg, bars.tick)
    bars.done()
    phases["kill_drill_s"], t = time.perf_counter() - t, time.perf_counter()
    await _extras(pool, cfg, bars, phases, work, out)
    phases["extras_s"] = time.perf_counter() - t
    return out


async def _extras(
    pool: WorkerPool, cfg: BenchConfig, bars: _Bars, phases: dict[str, float], work: Path, out: dict[str, Any]
) -> None:
    """The sessions scenario, the LiteLLM comparison and the real engines, each when asked for."""
    out["sessions"] = {"skipped": "not asked for (--no-sessions)"}
    if cfg.sessions:
        runs = []
        for policy in SESSION_POLICIES:
            bars.step(f"sessions with a SIMULATED prefix cache · {policy.value}", None)
            runs.append(await run_sessions(pool, cfg, policy, bars.tick))
            bars.done()
        out["sessions"] = {"runs": runs}
    t = time.perf_counter()
    out["litellm_router"] = {"skipped": "not asked for (--no-litellm)"}
    if cfg.litellm:
        out["litellm_router"] = await run_litellm_comparison(pool, cfg, lambda s: bars.step(s, None))
        bars.done()
    phases["litellm_s"], t = time.perf_counter() - t, time.perf_counter()
    out["real_engines"] = {"skipped": "not asked for (--no-real-engines)"}
    if cfg.real_engines:
        out["real_engines"] = await run_real_engines(cfg, work, lambda s: bars.step(s, None))
        bars.done()
    phases["real_engines_s"] = time.perf_counter() - t


def _delay_summary(spec: WorkerSpec) -> dict[str, Any]:
    model = spec.model
    z99 = statistics.NormalDist().inv_cdf(0.99)
    p50 = model.scale_s / model.speed
    p99 = model.scale_s * math.exp(z99 * model.shape) / model.speed if model.kind == "lognormal" else p50
    return {
        "delay_model": spec.delay,
        "slots": spec.slots,
        "mean_service_ms": model.mean_s * 1000,
        "median_service_ms": p50 * 1000,
        "p99_service_ms": p99 * 1000,
        "capacity_rps": spec.capacity_rps if spec.slots is not None else None,
    }


def _start(pool: WorkerPool, cfg: BenchConfig, bars: _Bars) -> tuple[dict[str, Any], dict[str, float]]:
    """Start every worker and wait for them; the machine's description and each worker's seconds to ready."""

    bars.step(f"starting {len(pool.specs)} SIMULATED workers (tandem worker --simulate)", None)
    pool.start_all()
    machine = machine_info()  # imports torch: done while the workers boot
    ready = pool.wait_ready(cfg.startup_timeout_s)
    # machine_info() imported torch: a full collection of this heap then takes ~100 ms, a stall of the
    # load generator and the dispatcher alike. Freeze what exists now; collections see only new objects.
    gc.collect()
    gc.freeze()
    return machine, ready


def _cpu(measured: Mapping[str, Any], wall: float, measured_s: float) -> dict[str, Any]:
    """CPU use over the whole run (this process and its reaped workers) and in the busiest measured window."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total_cpu = own_cpu_seconds() + children.ru_utime + children.ru_stime
    runs_cpu = [r["cpu"] for r in (*measured["runs"], *measured["equal_runs"], measured["kill_drill"]) if r["cpu"]]
    ours = [c["driver_cores"] + c["workers_cores"] for c in runs_cpu]
    lags = (r["arrival_lag_p99_ms"] for r in (*measured["runs"], *measured["equal_runs"]) if r["arrival_lag_p99_ms"])
    return {
        "wall_s": wall,
        "measured_s": measured_s,
        "cpu_s": total_cpu,
        "mean_cores": total_cpu / wall,
        "max_run_cores_ours": max(ours) if ours else None,
        "max_run_cores_machine": max((c["machine_cores"] for c in runs_cpu), default=None),
        "max_run_driver_cores": max((c["driver_cores"] for c in runs_cpu), default=None),
        "max_arrival_lag_p99_ms": max(lags, default=None),
        "logical_cores": os.cpu_count(),
    }


def _results(
    cfg: BenchConfig, pool: WorkerPool, startup: Mapping[str, Any], measured: Mapping[str, Any], cpu: dict[str, Any]
) -> dict[str, Any]:
    """The results JSON before rounding: set-up, every run, the headline keys the project promises, CPU use."""
    return {
        "synthetic": True,
        "simulated": SIMULATED_NOTE,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": startup["machine"],
        "config": asdict(cfg),
        "workers": {s.name: _delay_summary(s) for s in worker_specs(cfg)},
        "scenarios": {
            "heterogeneous": {"workers": list(HETEROGENEOUS), "capacity_rps": pool.capacity_rps(HETEROGENEOUS)},
            "equal": {"workers": list(equal_pool(cfg)), "capacity_rps": pool.capacity_rps(equal_pool(cfg))},
            "kill": {"workers": list(KILL_POOL), "capacity_rps": pool.capacity_rps(KILL_POOL)},
        },
        "startup": {"ready_s": startup["ready"], "quiet": startup["quiet"]},
        "runs": measured["runs"],
        "equal_runs": measured["equal_runs"],
        "overhead": measured["overhead"],
        "kill_drill": measured["kill_drill"],
        "policies": headline_policies(measured["runs"], measured["equal_runs"], cfg.headline_load),
        "dispatcher_overhead_ms": measured["overhead"]["in_process"]["complete"]["overhead_ms"],
        "kill_one_of_three_success_rate": measured["kill_drill"]["success_rate"],
        "sessions": measured["sessions"],
        "litellm_router": measured["litellm_router"],
        "real_engines": measured["real_engines"],
        "cpu": cpu,
    }


def _attach_log(results: dict[str, Any], log: Sequence[tuple[float, str, str | None]], log_wall0: float) -> None:
    """The dispatcher's own log lines: the whole run's, and the drill's on the drill's clock."""
    results["dispatcher_log"] = [
        {"t_s": created - log_wall0, "message": message, "worker": worker} for created, message, worker in log
    ][:200]
    drill_t0 = results["kill_drill"].pop("wall_t0")
    results["kill_drill"]["dispatcher_log"] = [
        {"t_s": created - drill_t0, "message": message, "worker": worker}
        for created, message, worker in log
        if created >= drill_t0
    ]


def run(
    config: BenchConfig | None = None, *, reports_dir: Path = Path("eval/reports"), console: Console | None = None
) -> dict[str, Any]:
    """The whole benchmark (the package docstring); returns the results with ``report`` (the paths written)."""
    cfg = config or BenchConfig()
    echo: Callable[[str], None] = console.print if console is not None else (lambda _m: None)
    started = time.perf_counter()
    log_wall0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="tandem-bench-llm-"))
    pool = WorkerPool(worker_specs(cfg), work, cfg.seed)
    steps = 1 + (cfg.e2e_n > 0) + len(cfg.loads) * len(POLICIES) + len(POLICIES) + 1
    steps += len(SESSION_POLICIES) * cfg.sessions + cfg.litellm + cfg.real_engines
    ok = False
    quiet: dict[str, float] | None = None
    phases: dict[str, float] = {}
    try:
        with progress_display(console, counts=True) as progress, dispatcher_log() as log:
            bars = _Bars(progress, steps)
            machine, ready = _start(pool, cfg, bars)
            phases["startup_s"] = time.perf_counter() - started
            if cfg.quiet_wait_s > 0:
                bars.step("waiting for other processes to leave the CPU", None)
                quiet = wait_for_quiet(cfg.quiet_wait_s, own=pool.alive())
                phases["quiet_wait_s"] = quiet["waited_s"]
            measured_at = time.perf_counter()
            measured = asyncio.run(_measure(pool, cfg, bars, phases, work))
            measured_s = time.perf_counter() - measured_at
        ok = True
    finally:
        stopping = time.perf_counter()
        pool.stop_all()
        phases["stop_s"] = time.perf_counter() - stopping
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            echo(f"worker logs kept in {work}")
    cpu = _cpu(measured, time.perf_counter() - started, measured_s)
    startup = {"machine": machine, "ready": ready, "quiet": quiet}
    raw = _results(cfg, pool, startup, measured, cpu)
    _attach_log(raw, log, log_wall0)
    results: dict[str, Any] = round_floats(raw, 4)
    results["targets"] = evaluate_targets(results)
    results["scenario_notes"] = list(SCENARIO_NOTES)
    results["phases_s"] = round_floats(phases, 2)
    check_shape(results)
    paths = write_report(results, reports_dir)
    results["report"] = {k: str(v) for k, v in paths.items()}
    return results
