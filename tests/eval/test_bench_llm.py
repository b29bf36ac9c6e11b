"""Tests for eval.bench_llm: the pure parts (arrivals, percentiles, shares, capacity, timelines, targets, report)
and, marked slow, the quick benchmark end to end against real simulated worker processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from eval.bench_llm import (
    HEADLINE_KEYS,
    KILL_POOL,
    POLICIES,
    BenchConfig,
    RequestRecord,
    WorkerSpec,
    check_shape,
    delay_spec,
    evaluate_targets,
    headline_policies,
    kill_timeline,
    max_share_ratio,
    mean_in_flight,
    measure_overhead_in_process,
    percentile,
    poisson_schedule,
    pool_capacity_rps,
    summarise_requests,
    traffic_shares,
    worker_specs,
    write_report,
)
from eval.bench_llm.config import CACHE_POOL
from eval.bench_llm.litellm_router import (
    TruncatedStreamError,
    _consume,
    _dispatcher_send,
    _drive,
    _import_litellm,
    _router_send,
    litellm_available,
    make_router,
    summarise_kill,
)
from eval.bench_llm.load import chat_payload
from eval.bench_llm.real_engines import engine_argv, find_gguf, llama_ready, run_real_engines
from eval.bench_llm.report import litellm_verdict, markdown
from eval.bench_llm.sessions import TurnRecord, cache_note, session_schedule, summarise_turns
from eval.bench_llm.workers import WorkerPool
from llms.config import DispatcherConfig, WorkerConfig
from llms.dispatcher import Dispatcher
from llms.worker.delay import DelayModel

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- arrivals


def test_poisson_schedule_has_the_asked_mean_rate_and_exponential_gaps() -> None:
    times = poisson_schedule(50.0, 200.0, random.Random(0))
    assert times == sorted(times)
    assert times[0] > 0 and times[-1] < 200.0
    assert len(times) / 200.0 == pytest.approx(50.0, rel=0.03)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Exponential gaps: mean 1/rate and a coefficient of variation of 1.
    assert statistics.fmean(gaps) == pytest.approx(0.02, rel=0.03)
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, abs=0.05)


def test_poisson_schedule_is_reproducible_and_checks_its_input() -> None:
    assert poisson_schedule(10, 5, random.Random(3)) == poisson_schedule(10, 5, random.Random(3))
    assert poisson_schedule(10, 5, random.Random(3)) != poisson_schedule(10, 5, random.Random(4))
    with pytest.raises(ValueError, match="positive"):
        poisson_schedule(0, 5, random.Random(0))
    with pytest.raises(ValueError, match="positive"):
        poisson_schedule(5, 0, random.Random(0))


# --------------------------------------------------------------------------- percentiles & shares


def test_percentile_interpolates_linearly() -> None:
    assert percentile([10.0, 20.0, 30.0, 40.0], 50) == 25.0
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 101)


def test_traffic_shares_are_deltas_that_sum_to_one() -> None:
    shares = traffic_shares({"a": 10, "b": 5, "c": 0}, {"a": 40, "b": 35, "c": 40})
    assert shares == pytest.approx({"a": 0.3, "b": 0.3, "c": 0.4})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert traffic_shares({}, {"a": 3, "b": 1}) == {"a": 0.75, "b": 0.25}  # a worker new in the window
    assert traffic_shares({"a": 2}, {"a": 2, "b": 0}) == {"a": 0.0, "b": 0.0}  # no traffic at all


def test_max_share_ratio_is_busiest_over_fair_share() -> None:
    assert max_share_ratio({"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}) == pytest.approx(1.0)
    assert max_share_ratio({"a": 0.4, "b": 0.2, "c": 0.2, "d": 0.2}) == pytest.approx(1.6)
    assert max_share_ratio({"a": 1.0}) == 1.0
    with pytest.raises(ValueError, match="no workers"):
        max_share_ratio({})


def test_mean_in_flight_uses_only_samples_inside_the_window() -> None:
    samples = [
        (0.5, {"a": (0, 9, True), "b": (0, 9, True)}),
        (1.0, {"a": (1, 2, True), "b": (1, 0, True)}),
        (2.0, {"a": (2, 4, True), "b": (2, 1, True)}),
        (3.5, {"a": (3, 9, True), "b": (3, 9, True)}),
    ]
    assert mean_in_flight(samples, 1.0, 3.0) == {"a": 3.0, "b": 0.5}
    assert mean_in_flight(samples, 10.0, 11.0) == {}


# --------------------------------------------------------------------------- capacity & workers


def test_capacity_is_slots_over_mean_service_time() -> None:
    fast = DelayModel.parse(delay_spec(150, 0.9))
    slow = DelayModel.parse(delay_spec(150, 0.9, speed=0.25))
    mean_fast = 0.150 * math.exp(0.9**2 / 2)
    assert fast.mean_s == pytest.approx(mean_fast)
    assert slow.mean_s == pytest.approx(4 * mean_fast)
    assert pool_capacity_rps([(fast, 4)]) == pytest.approx(4 / mean_fast)
    expected = 2 * 4 / mean_fast + 4 / (4 * mean_fast)
    assert pool_capacity_rps([(fast, 4), (fast, 4), (slow, 4)]) == pytest.approx(expected)
    assert pool_capacity_rps([(DelayModel.parse("constant:ms=100"), 2)]) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="at least one"):
        pool_capacity_rps([])


def test_delay_spec_is_what_the_worker_cli_parses() -> None:
    spec = delay_spec(150, 0.9, speed=0.25, ttft=0.2)
    assert spec == "lognormal:median_ms=150,sigma=0.9,speed=0.25,ttft=0.2"
    model = DelayModel.parse(spec)
    assert (model.kind, model.scale_s, model.shape, model.speed, model.ttft_fraction) == (
        "lognormal",
        0.15,
        0.9,
        0.25,
        0.2,
    )


def test_worker_specs_cover_every_scenario() -> None:
    cfg = BenchConfig()
    specs = {s.name: s for s in worker_specs(cfg)}
    assert {"fast-1", "fast-2", "fast-3", "fast-4", "slow-1", "zero", *CACHE_POOL} == set(specs)
    assert set(KILL_POOL) <= set(specs)
    assert specs["slow-1"].model.mean_s == pytest.approx(specs["fast-1"].model.mean_s / cfg.slow_speed)
    assert specs["zero"].slots is None and math.isinf(specs["zero"].capacity_rps)
    # quick skips overhead (b); only the LiteLLM comparison still needs the zero-delay worker
    assert "zero" not in {s.name for s in worker_specs(BenchConfig.quick_config(litellm=False))}
    assert WorkerSpec("w", "constant:ms=250", 4).capacity_rps == pytest.approx(16.0)


def test_configs_are_checked() -> None:
    quick = BenchConfig.quick_config()
    assert quick.quick and quick.headline_load in quick.loads
    assert BenchConfig.quick_config(seed=5).seed == 5
    with pytest.raises(ValueError, match="same length"):
        BenchConfig(loads=(0.5, 0.8), durations_s=(1.0,), headline_load=0.8)
    with pytest.raises(ValueError, match="headline_load"):
        BenchConfig(loads=(0.5,), durations_s=(1.0,))
    with pytest.raises(ValueError, match="fractions"):
        BenchConfig(equal_load=1.2)


# --------------------------------------------------------------------------- summaries


def _record(at: float, latency: float | None, *, ttft: float | None = None, error: str | None = None) -> RequestRecord:
    return RequestRecord(
        scheduled_s=at,
        lag_s=0.001,
        kind="stream",
        end_s=at + (latency or 0.1),
        latency_s=latency,
        ttft_s=ttft,
        error=error,
    )


def test_summary_counts_only_the_measured_window() -> None:
    records = [_record(0.5, 9.0, ttft=9.0)]  # warm-up: sent, not counted
    records += [_record(1.0 + i * 0.01, 0.1 + i * 0.001, ttft=0.02) for i in range(100)]
    records += [_record(2.5, None, error="OverloadedError"), _record(2.6, None, error="WorkerError")]
    records += [_record(5.0, 0.1, ttft=0.02)]  # after the window
    s = summarise_requests(records, 1.0, 3.0)
    assert s["requests"] == 102 and s["ok"] == 100
    assert s["errors"] == {"OverloadedError": 1, "WorkerError": 1}
    assert s["overloaded"] == 1
    assert s["success_rate"] == pytest.approx(100 / 102)
    assert s["p50_ms"] == pytest.approx(149.5)
    assert s["p99_ms"] == pytest.approx(percentile([100 + i for i in range(100)], 99))
    assert s["ttft_p50_ms"] == pytest.approx(20.0)
    assert s["offered_rps"] == pytest.approx(51.0)
    # Completed inside [1, 3]: the 100 good ones end by 2.2 s; the warm-up one ends at 9.5 s.
    assert s["throughput_rps"] == pytest.approx(50.0)
    assert s["arrival_lag_p99_ms"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty window"):
        summarise_requests(records, 3.0, 3.0)


def test_summary_of_nothing_has_no_percentiles() -> None:
    s = summarise_requests([], 0.0, 1.0)
    assert s["requests"] == 0 and s["p99_ms"] is None and s["success_rate"] is None


def test_kill_timeline_times_removal_and_return() -> None:
    def sample(t: float, victim_requests: int, healthy: bool = True) -> tuple[float, dict[str, tuple[int, int, bool]]]:
        return (t, {"a": (int(t * 10), 1, True), "v": (victim_requests, 0, healthy)})

    samples = [sample(0.9, 50), sample(1.0, 52)]  # killed at 1.05 s
    samples += [sample(1.1, 54), sample(1.2, 55, healthy=False), sample(1.3, 55, healthy=False)]
    samples += [sample(t / 10, 55, healthy=False) for t in range(14, 30)]  # restarted at 3.0 s
    samples += [sample(3.0, 55, healthy=False), sample(3.5, 55), sample(3.6, 58)]
    out = kill_timeline(samples, "v", kill_s=1.05, restart_s=3.0)
    assert out["attempts_after_kill"] == 3
    assert out["removal_s"] == pytest.approx(0.15)  # counter flat from the 1.2 s sample on
    assert out["marked_out_s"] == pytest.approx(0.15)
    assert out["healthy_again_s"] == pytest.approx(0.5)
    assert out["return_s"] == pytest.approx(0.6)


def test_kill_timeline_without_samples_says_nothing() -> None:
    out = kill_timeline([], "v", 1.0, 2.0)
    assert set(out.values()) == {None}


# --------------------------------------------------------------------------- headline, targets, report


def _run(policy: str, load: float, p99: float, shares: dict[str, float] | None = None) -> dict[str, Any]:
    shares = shares or {"fast-1": 0.45, "fast-2": 0.45, "slow-1": 0.1}
    return {
        "policy": policy,
        "load": load,
        "target_rps": 30.0,
        "offered_rps": 29.8,
        "throughput_rps": 29.5,
        "requests": 1200,
        "p50_ms": 200.0,
        "p99_ms": p99,
        "ttft_p50_ms": 40.0,
        "ttft_p99_ms": 900.0,
        "errors": {},
        "shares": shares,
        "max_share": max_share_ratio(shares),
        "mean_in_flight": dict.fromkeys(shares, 1.0),
        "cpu": {"driver_cores": 0.3, "workers_cores": 0.3, "other_cores": 0.0},
    }


def _results(rr_p99: float = 6000.0, lo_p99: float = 2000.0) -> dict[str, Any]:
    p99 = {"round_robin": rr_p99, "least_outstanding": lo_p99, "power_of_two": 1800.0}
    runs = [_run(p.value, load, p99[p.value] * load) for load in (0.4, 0.8) for p in POLICIES]
    equal = {"fast-1": 0.3, "fast-2": 0.25, "fast-3": 0.25, "fast-4": 0.2}
    equal_runs = [_run(p.value, 0.6, 900.0, equal) for p in POLICIES]
    policies = headline_policies(runs, equal_runs, 0.8)
    kd = {
        "requests": 1000,
        "success_rate": 0.995,
        "duration_s": 30.0,
        "target_rps": 32.0,
        "load": 0.6,
        "capacity_rps": 53.3,
        "policy": "power_of_two",
        "victim": "fast-3",
        "kill_s": 8.0,
        "restart_s": 13.0,
        "ready_after_restart_s": 5.0,
        "removal_s": 0.1,
        "attempts_after_kill": 2,
        "marked_out_s": 0.1,
        "return_s": 5.4,
        "return_after_ready_s": 0.4,
        "healthy_again_s": 5.3,
        "retries": 3,
        "errors": {"StreamInterruptedError": 5},
        "worker_error_kinds": {"connect": 1},
        "by_kind": {k: {"requests": 500, "ok": 497, "p50_ms": 200.0, "p99_ms": 1500.0} for k in ("complete", "stream")},
        "cpu": {"driver_cores": 0.3, "workers_cores": 0.3, "other_cores": 0.0},
        "samples": [[t / 10, {"fast-1": t, "fast-2": t, "fast-3": min(t, 80)}, {}] for t in range(300)],
        "dispatcher_log": [{"t_s": 8.1, "message": "llm worker out", "worker": "fast-3"}],
    }
    overhead = {
        "in_process": {
            k: {"n": 100, "direct_median_us": 300.0, "dispatched_median_us": 400.0, "overhead_ms": 0.1}
            for k in ("complete", "stream")
        }
    }
    results: dict[str, Any] = {
        "synthetic": True,
        "generated_at": "2026-01-01T00:00:00+00:00",
        "machine": {"cpu": "test", "logical_cores": 2},
        "config": {**BenchConfig().__dict__},
        "workers": {
            s.name: {
                "delay_model": s.delay,
                "slots": s.slots,
                "median_service_ms": 150.0,
                "mean_service_ms": 225.0,
                "p99_service_ms": 1200.0,
                "capacity_rps": None,
            }
            for s in worker_specs(BenchConfig())
        },
        "scenarios": {
            "heterogeneous": {"workers": ["fast-1", "fast-2", "slow-1"], "capacity_rps": 40.0},
            "equal": {"workers": ["fast-1", "fast-2", "fast-3", "fast-4"], "capacity_rps": 71.1},
            "kill": {"workers": list(KILL_POOL), "capacity_rps": 53.3},
        },
        "runs": runs,
        "equal_runs": equal_runs,
        "overhead": overhead,
        "kill_drill": kd,
        "policies": policies,
        "dispatcher_overhead_ms": 0.1,
        "kill_one_of_three_success_rate": 0.995,
        "cpu": {
            "wall_s": 500.0,
            "measured_s": 480.0,
            "cpu_s": 300.0,
            "mean_cores": 0.6,
            "max_run_cores_ours": 0.9,
            "max_run_cores_machine": 1.0,
            "max_run_driver_cores": 0.5,
            "logical_cores": 2,
        },
    }
    results["targets"] = evaluate_targets(results)
    return results


def test_headline_takes_the_heterogeneous_run_at_the_load_and_the_equal_share() -> None:
    results = _results()
    policies = results["policies"]
    assert set(policies) == {p.value for p in POLICIES}
    for figures in policies.values():
        assert set(figures) == set(HEADLINE_KEYS)
    assert policies["round_robin"]["p99_ms"] == pytest.approx(4800.0)  # 6000 × 0.8: the 80 % run
    assert policies["least_outstanding"]["max_share"] == pytest.approx(1.2)
    check_shape(results)


def test_targets_pass_and_miss() -> None:
    targets = {t["target"].split(" ")[0]: t for t in _results()["targets"]}
    assert targets["least_outstanding"]["passed"] is True  # 3× lower
    assert all(t["passed"] for t in _results()["targets"])
    missed = evaluate_targets(_results(rr_p99=3000.0, lo_p99=2000.0))
    lo = next(t for t in missed if t["target"].startswith("least_outstanding p99"))
    assert lo["passed"] is False and lo["value"] == pytest.approx(1.5)
    unmeasured = evaluate_targets({"policies": {}, "dispatcher_overhead_ms": None})
    assert all(t["passed"] is None for t in unmeasured)


def test_check_shape_refuses_what_the_project_does_not_promise() -> None:
    results = _results()
    check_shape(results)
    broken = {**results, "policies": {k: v for k, v in results["policies"].items() if k != "power_of_two"}}
    with pytest.raises(ValueError, match="exactly"):
        check_shape(broken)
    broken = {**results, "policies": {**results["policies"], "round_robin": {"p50_ms": 1.0}}}
    with pytest.raises(ValueError, match="must hold"):
        check_shape(broken)
    with pytest.raises(ValueError, match="missing"):
        check_shape({k: v for k, v in results.items() if k != "dispatcher_overhead_ms"})
    with pytest.raises(ValueError, match="number"):
        check_shape({**results, "kill_one_of_three_success_rate": "99%"})


def test_write_report_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    results = _results()
    paths = write_report(results, tmp_path)
    assert set(paths) == {"json", "markdown", "png"}
    data = json.loads(paths["json"].read_text())
    check_shape(data)
    assert data["synthetic"] is True
    md = paths["markdown"].read_text()
    assert "SIMULATED" in md and "HTTP/SSE/dispatcher are real" in md
    assert "**PASS**" in md
    assert "| 80% | `round_robin`" in md
    assert paths["png"].stat().st_size > 10_000


def test_in_process_overhead_runs_on_a_mock_transport() -> None:
    cfg = BenchConfig.quick_config(overhead_n=50)
    out = asyncio.run(measure_overhead_in_process(cfg))
    for key in ("complete", "stream"):
        o = out[key]
        assert o["direct_median_us"] > 0 and o["dispatched_median_us"] > 0
        assert o["overhead_ms"] == pytest.approx((o["dispatched_median_us"] - o["direct_median_us"]) / 1000)


# --------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path: Path) -> None:
    """``tandem bench llm --quick``: real worker processes, every scenario, the report written."""
    done = subprocess.run(
        [sys.executable, "-m", "api.cli.main", "bench", "llm", "--quick", "--reports", str(tmp_path)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "llm_serving.json").read_text())
    assert (tmp_path / "llm_serving.md").is_file() and (tmp_path / "llm_serving.png").is_file()
    check_shape(results)
    assert results["synthetic"] is True
    for name, figures in results["policies"].items():
        assert figures["p50_ms"] > 0 and figures["p99_ms"] >= figures["p50_ms"], name
        assert 0 < figures["ttft_p50_ms"] <= figures["p50_ms"], name
        assert figures["throughput_rps"] > 0, name
        assert 1.0 <= figures["max_share"] <= 4.0, name
    for run in [*results["runs"], *results["equal_runs"]]:
        assert sum(run["shares"].values()) == pytest.approx(1.0, abs=1e-3)
        assert run["requests"] > 0 and run["ok"] > 0
    assert 0.0 <= results["kill_one_of_three_success_rate"] <= 1.0
    assert results["kill_drill"]["requests"] > 0
    assert results["kill_drill"]["return_s"] is not None  # the restarted worker got traffic again
    assert -1 < results["dispatcher_overhead_ms"] < 50
    assert all(isinstance(t["passed"], bool) for t in results["targets"])


# --------------------------------------------------------------------------- sessions, LiteLLM, real engines


def test_cache_notes_and_session_schedules() -> None:
    assert cache_note("[simulated m, prefix cache 120/300] about x") == (120, 300)
    assert cache_note("[simulated m] about x") is None
    starts = session_schedule(500, 5.0, random.Random(0))
    assert starts == sorted(starts) and len(starts) == 500
    assert 500 / starts[-1] == pytest.approx(5.0, rel=0.15)
    with pytest.raises(ValueError, match="positive"):
        session_schedule(3, 0.0, random.Random(0))


def test_turn_summary_counts_hits_latency_and_errors() -> None:
    records = [
        TurnRecord(0, 0, 0.2, 0.05, 10, 200),
        TurnRecord(0, 1, 0.1, 0.02, 200, 240),  # found its previous turn: a follow-up hit
        TurnRecord(1, 0, 0.3, 0.10, 0, 200),
        TurnRecord(1, 1, 0.3, 0.09, 10, 240),  # another worker: a miss
        TurnRecord(1, 2, None, None, None, None, "WorkerError"),
    ]
    s = summarise_turns(records, wall_s=2.0)
    assert (s["requests"], s["ok"], s["errors"]) == (5, 4, {"WorkerError": 1})
    assert s["token_hit_rate"] == pytest.approx(220 / 880)
    assert s["followup_hit_rate"] == 0.5
    assert s["throughput_rps"] == 2.0
    assert s["p50_ms"] == pytest.approx(250.0)
    assert s["ttft_p50_ms"] == pytest.approx(70.0)  # 20, 50, 90, 100 ms


def test_session_workers_get_a_prefix_cache_and_the_others_do_not() -> None:
    specs = {s.name: s for s in worker_specs(BenchConfig())}
    assert {n for n, s in specs.items() if s.prefix_cache} == set(CACHE_POOL)
    assert specs["cache-1"].prefix_cache == "tokens=4000,prefill_ms=0.5"
    assert "zero" in specs, "the LiteLLM overhead needs the zero-delay worker"
    off = worker_specs(BenchConfig.quick_config(sessions=False, litellm=False))
    assert not any(s.prefix_cache for s in off) and "zero" not in {s.name for s in off}


def test_kill_summary_times_failures_from_the_kill() -> None:
    def rec(at: float, error: str | None = None, latency: float | None = 0.1) -> RequestRecord:
        return RequestRecord(at, 0.0, "complete", at + 0.1, None if error else latency, None, error)

    records = [rec(0.5), rec(1.2, "WorkerError"), rec(2.5, "APIConnectionError"), rec(2.6, latency=0.9), rec(6.0)]
    s = summarise_kill(records, kill_s=1.0)
    assert s["errors_after_kill"] == 2
    assert s["failures_until_s"] == pytest.approx(1.6)  # the last error ended at 2.6 s
    assert s["p99_ms_after_kill"] == pytest.approx(900.0)
    assert s["success_rate"] == pytest.approx(0.6)
    assert summarise_kill([rec(0.5), rec(2.0)], kill_s=1.0)["failures_until_s"] is None


def test_real_engines_are_skipped_with_a_hint_without_a_llama_build(tmp_path: Path) -> None:
    cfg = BenchConfig.quick_config(llama_python=str(tmp_path / "nowhere" / "python"))
    row = asyncio.run(run_real_engines(cfg, tmp_path))
    assert set(row) == {"skipped"} and "make engines" in row["skipped"]
    assert llama_ready(tmp_path / "nowhere") is not None


def test_a_llama_server_is_one_thread_and_never_interrupted() -> None:
    argv = engine_argv(Path("/v/bin/python"), Path("/m/model.gguf"), 9001)
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert argv[:3] == ["/v/bin/python", "-m", "llama_cpp.server"]
    assert flags["--n_threads"] == "1" and flags["--interrupt_requests"] == "False"
    assert (flags["--model"], flags["--port"], flags["--host"]) == ("/m/model.gguf", "9001", "127.0.0.1")
    gguf = find_gguf()
    assert gguf is None or gguf.name.endswith(".gguf")


def test_report_shows_the_new_rows_or_why_they_were_skipped(tmp_path: Path) -> None:
    results = _results()
    skipped = markdown({**results, "real_engines": {"skipped": "no llama.cpp build: run `make engines` first"}})
    assert "Skipped: no llama.cpp build: run `make engines` first." in skipped
    session = {"policy": "affinity", "requests": 30, "errors": {}, "token_hit_rate": 0.8, "followup_hit_rate": 0.9,
               "p50_ms": 200.0, "p99_ms": 600.0, "ttft_p50_ms": 40.0, "ttft_p99_ms": 90.0, "throughput_rps": 5.0,
               "shares": {"cache-1": 0.3, "cache-2": 0.3, "cache-3": 0.4}, "cpu": {}}  # fmt: skip
    md = markdown({**results, "sessions": {"runs": [session]}})
    assert "SIMULATED prefix cache" in md and "| `affinity` | 30 | 0 | 80.0 | 90.0 |" in md


def test_a_stream_without_a_finish_reason_is_a_truncated_answer() -> None:
    async def chunks(items: list[Any]) -> AsyncIterator[Any]:
        for item in items:
            yield item

    done = {"choices": [{"delta": {}, "finish_reason": "stop"}]}
    part = {"choices": [{"delta": {"content": "a"}, "finish_reason": None}]}
    assert asyncio.run(_consume(chunks([part, done]))) is not None
    as_objects = SimpleNamespace(choices=[SimpleNamespace(finish_reason="length")])  # LiteLLM's chunk objects
    assert asyncio.run(_consume(chunks([as_objects]))) is not None
    with pytest.raises(TruncatedStreamError):
        asyncio.run(_consume(chunks([part, part])))


@pytest.mark.slow  # importing LiteLLM takes 5-40 s, and two worker processes start
@pytest.mark.skipif(not litellm_available(), reason="litellm (a dev dependency) is not installed")
def test_litellm_router_and_dispatcher_on_two_simulated_workers(tmp_path: Path) -> None:
    """A tiny load through LiteLLM's Router and through the dispatcher, on two real simulated worker processes."""
    specs = [WorkerSpec(f"fast-{i}", "constant:ms=20", 2) for i in (1, 2)]
    pool = WorkerPool(specs, tmp_path, seed=0)
    try:
        pool.start_all()
        pool.wait_ready(120)
        litellm = _import_litellm()
        arrivals = [(i * 0.02, "stream" if i % 2 else "complete") for i in range(10)]
        payload = chat_payload(8)

        async def main() -> tuple[list[RequestRecord], list[RequestRecord]]:
            router = make_router(litellm, pool, ["fast-1", "fast-2"], "simple-shuffle", num_retries=0)
            routed, _ = await _drive(_router_send(router), arrivals, payload, 30.0)
            workers = [WorkerConfig(url=pool.url(n), name=n, models=["tandem-simulated"]) for n in ("fast-1", "fast-2")]
            async with Dispatcher(DispatcherConfig(), workers) as d:
                dispatched, _ = await _drive(_dispatcher_send(d), arrivals, payload, 30.0)
            return routed, dispatched

        routed, dispatched = asyncio.run(main())
    finally:
        pool.stop_all()
    for records in (routed, dispatched):
        assert [r.error for r in records] == [None] * 10
        assert all(r.latency_s is not None and r.latency_s > 0 for r in records)
        assert all((r.ttft_s is not None) == (r.kind == "stream") for r in records)


def _litellm_row(l_overhead: float, l_p99: float, l_refused: int, l_over_p99: float) -> dict[str, Any]:
    def over(refused: int, p99: float) -> dict[str, Any]:
        return {"requests": 100, "ok": 100 - refused, "refused_429": refused, "other_errors": {}, "p50_ms": 300.0,
                "p99_ms": p99, "max_ms": p99, "refusal_p50_ms": 3.0 if refused else None, "wall_s": 3.0}  # fmt: skip

    kill = {"requests": 100, "ok": 99, "success_rate": 0.99, "errors_after_kill": 1, "errors": {"X": 1},
            "failures_until_s": 0.1, "p99_ms_after_kill": 800.0}  # fmt: skip
    return {
        "latency": {"load": 0.5, "tandem_power_of_two": {"p99_ms": 1000.0}, "litellm_least-busy": {"p99_ms": l_p99}},
        "overhead": {"tandem": {"overhead_ms": 0.2}, "litellm": {"overhead_ms": l_overhead}},
        "kill": {"tandem_power_of_two": kill, "litellm_simple-shuffle": kill},
        "overload": {
            "offered": 2.0,
            "tandem_power_of_two": over(50, 1000.0),
            "litellm_least-busy": over(l_refused, l_over_p99),
        },
    }


def test_the_litellm_verdict_follows_the_figures() -> None:
    assert litellm_verdict(_litellm_row(0.8, 1100.0, 20, 1200.0)).startswith("LiteLLM could sit behind")
    for costly in (
        _litellm_row(23.0, 1100.0, 20, 1200.0),  # 23 ms a request
        _litellm_row(0.8, 5000.0, 20, 1200.0),  # p99 5× the dispatcher's
        _litellm_row(0.8, 1100.0, 0, 9000.0),
    ):  # no refusals, p99 runs away under overload
        verdict = litellm_verdict(costly)
        assert verdict.startswith("Do not adopt LiteLLM"), verdict
