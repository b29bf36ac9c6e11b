"""The benchmark's report: ``llm_serving.md`` section by section, the four-panel plot, and the files.

:func:`markdown` joins one function per report section (headline, targets, method, workers,
heterogeneous runs, equal workers, overhead, kill drill, scenario choices, CPU use);
:func:`write_report` writes the JSON, the markdown and the PNG. Every section says the model
is SIMULATED: the figures measure queueing, balancing and failover, not a model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.bench_llm.config import KILL_VICTIM, POLICIES, REPORT_NAME, SCENARIO_NOTES, SIMULATED_NOTE
from eval.bench_llm.targets import MAX_SHARE_MAX
from eval.report_format import fmt, table, verdict

__all__ = ["markdown", "write_report"]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    # Cells arrive formatted; the figures' columns are right-aligned; a section adds its own blank lines.
    return table(header, rows, align or "l" + "r" * (len(header) - 1), cell=str, blank=False)


def _counted(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} × {v}" for k, v in counts.items()) or "none"


def _shares(shares: Mapping[str, float]) -> str:
    return " / ".join(f"{v:.0%}" for v in shares.values())


def _cores(cpu: Mapping[str, float]) -> str:
    if not cpu:
        return "–"
    return (
        f"{cpu['driver_cores']:.2f} / {cpu['workers_cores']:.2f} / {cpu['other_cores']:.2f} / "
        f"{cpu.get('steal_cores', 0.0):.2f}"
    )


def _intro(results: Mapping[str, Any]) -> list[str]:
    cfg = results["config"]
    m = results["machine"]
    cpu = results["cpu"]
    lines = [
        "# LLM serving: the dispatcher in front of SIMULATED GPU workers",
        "",
        f"> **Synthetic benchmark: {SIMULATED_NOTE}.** Each worker is a real `tandem worker --simulate` process "
        "(uvicorn + FastAPI, OpenAI chat completions over HTTP and SSE) whose model is replaced by a delay model; "
        "the figures measure queueing, balancing and failover, not a model.",
        "",
        f"Machine: {m.get('cpu')}, {m.get('logical_cores')} logical cores, {m.get('ram_gb')} GB RAM, GPU: "
        f"{m.get('gpu')}; Python {m.get('python')}; load average at the start {m.get('load_average_1_5_15m')}; "
        f"generated {results['generated_at']}{' (**--quick**: short runs, a smoke test)' if cfg['quick'] else ''}.",
        f"Whole run {cpu['wall_s']:.0f} s wall ({cpu['measured_s']:.0f} s measuring), "
        f"{cpu['cpu_s']:.0f} CPU-s in all (this process and every worker, start-ups included).",
        "",
        "## Headline",
        "",
        f"Heterogeneous workers (two fast, one 4× slower) at {cfg['headline_load']:.0%} load; `max_share` from "
        f"{cfg['equal_workers']} equal workers at {cfg['equal_load']:.0%} load.",
        "",
    ]
    rows = [
        [f"`{name}`", fmt(v["p50_ms"], 0), fmt(v["p99_ms"], 0), fmt(v["ttft_p50_ms"], 0),
         fmt(v["throughput_rps"], 1), fmt(v["max_share"], 2)]
        for name, v in results["policies"].items()
    ]  # fmt: skip
    lines += _table(["policy", "p50 ms", "p99 ms", "TTFT p50 ms", "throughput req/s", "max share"], rows)
    return lines


def _targets(results: Mapping[str, Any]) -> list[str]:
    kd = results["kill_drill"]
    lines = [
        "",
        f"Dispatcher overhead per request: **{fmt(results['dispatcher_overhead_ms'], 3)} ms** (in process). "
        f"Kill one of three: **{fmt((kd['success_rate'] or 0) * 100, 2)} %** of {kd['requests']:,} requests "
        "succeeded.",
        "",
        "## Targets",
        "",
    ]
    rows = [[t["target"], t["measured"], verdict(t["passed"])] for t in results["targets"]]
    return [*lines, *_table(["target", "measured", "result"], rows, "--r")]


def _method(results: Mapping[str, Any]) -> list[str]:
    cfg = results["config"]
    het = results["scenarios"]["heterogeneous"]
    eq = results["scenarios"]["equal"]
    return [
        "",
        "## Method",
        "",
        f"- **Workers**: real processes on 127.0.0.1 started by `tandem worker --simulate --slots {cfg['slots']} "
        "--delay-model SPEC --seed N`; all are started at once, wait for `GET /health`, and are stopped at the end "
        "(also on Ctrl-C or an error). A SIMULATED engine draws each request's service time from the delay model "
        f"and streams {cfg['max_tokens']} synthetic tokens over it ({cfg['ttft_fraction']:.0%} of it before the first "
        f"token); at most {cfg['slots']} requests are served at once per worker, the others wait inside it (a GPU's "
        "batch limit).",
        "- **Dispatcher**: `llms.dispatcher.Dispatcher`, a fresh one per run, "
        f"`max_concurrency={cfg['max_concurrency']}` per worker (more than its {cfg['slots']} slots, as operators "
        "set vLLM's `max_num_seqs` generously: the dispatcher's limit alone does not protect a slow worker), "
        "otherwise `DispatcherConfig()` defaults "
        "(30 s interactive deadline, queue of 256).",
        "- **Capacity** = Σ slots / mean service time (the delay model's analytic mean): "
        f"{het['capacity_rps']:.1f} req/s for the heterogeneous pool, {eq['capacity_rps']:.1f} req/s for the equal "
        "one. Load levels are fractions of it.",
        "- **Arrivals**: open loop, Poisson (seeded): a request is sent at its planned time whether or not earlier "
        "ones have answered, so overload shows as latency. The same schedule is replayed for each policy at a load "
        "level, and policies are interleaved. Every request of the load runs is streamed (`Dispatcher.stream`).",
        f"- **Measured window**: requests planned after a {cfg['warmup_s']:g} s warm-up (sent, not counted) and "
        "before the run's end; every one is awaited. Latency = planned arrival → last chunk (queueing in the "
        "dispatcher and in the worker included); TTFT = planned arrival → first chunk; throughput = answers "
        "completed within the window / its length; traffic share = each worker's share of the requests the "
        "dispatcher sent over the window (its `workers()` counters).",
        "- **Overhead** (a): sequential calls on an instant in-process `httpx.MockTransport`, "
        "`Dispatcher.complete()` against the same POST through a bare `httpx.AsyncClient`, interleaved blocks of "
        f"100, {cfg['overhead_n']:,} each; the median difference is the dispatcher's overhead. The same for a "
        f"{cfg['max_tokens']}-token stream, and (b) end to end against a zero-delay worker process.",
        f"- **Kill one of three**: three fast workers at {cfg['kill_load']:.0%} load, half non-streamed calls (like "
        "the ranker's) and half streamed (like the explainer's), default policy (power of two), health checks every "
        f"{cfg['drill_health_interval_s']:g} s. {KILL_VICTIM} is SIGKILLed at {cfg['kill_at_s']:g} s and restarted "
        f"on the same port {cfg['restart_after_s']:g} s later (a new process: it imports torch before it answers). "
        "Success rate counts every request of the drill. The dispatcher's worker snapshots are sampled every "
        f"{cfg['sample_interval_s'] * 1000:.0f} ms for the removal and return times (upper bounds within one "
        "sampling interval).",
        "- **CPU**: the load generator and the dispatcher share this process (one event loop); each table gives "
        "the cores used during the measured window by this process / by the workers / by other processes on the "
        "machine / stolen by the hypervisor (a virtual machine's neighbours), so a reader can check the CPU was "
        "not the bottleneck. This process imported torch (to describe the machine), so its heap is frozen "
        "(`gc.freeze()`) before measuring: a full garbage collection of it took ~100 ms and stalled the event loop.",
        "- **Samples**: a p99 needs about 1,000 requests; the 80 % runs are sized for it, the other load levels "
        "have a few hundred and their p99 is close to their maximum (the `requests` column says how many).",
        "",
        "### Workers and delay models (SIMULATED)",
        "",
    ]


def _workers(results: Mapping[str, Any]) -> list[str]:
    het = results["scenarios"]["heterogeneous"]
    eq = results["scenarios"]["equal"]
    used = {
        name: ", ".join(
            label
            for label, members in (("heterogeneous", het["workers"]), ("equal", eq["workers"]),
                                   ("kill drill", results["scenarios"]["kill"]["workers"]))
            if name in members
        ) or "overhead (b)"
        for name in results["workers"]
    }  # fmt: skip
    rows = [
        [f"`{name}`", f"`{w['delay_model']}`", fmt(w["slots"]), fmt(w["median_service_ms"], 0),
         fmt(w["mean_service_ms"], 0), fmt(w["p99_service_ms"], 0), fmt(w["capacity_rps"], 1), used[name]]
        for name, w in results["workers"].items()
    ]  # fmt: skip
    return _table(
        ["worker", "delay model", "slots", "median ms", "mean ms", "p99 ms", "capacity req/s", "used in"],
        rows,
        "--rrrrr-",
    )


def _heterogeneous(results: Mapping[str, Any]) -> list[str]:
    het = results["scenarios"]["heterogeneous"]
    lines = [
        "",
        "## Heterogeneous workers: latency by load and policy",
        "",
        f"Workers {', '.join(het['workers'])} (slow-1 four times slower); shares in that order; "
        "in flight = mean requests the dispatcher had on each worker. Rate λ = load × capacity; offered = the "
        "requests the seeded Poisson schedule actually planned in the window, per second.",
        "",
    ]
    rows = [
        [f"{r['load']:.0%}", f"`{r['policy']}`", fmt(r["target_rps"], 1), fmt(r["offered_rps"], 1),
         fmt(r["throughput_rps"], 1),
         f"{r['requests']:,}", fmt(r["p50_ms"], 0), fmt(r["p99_ms"], 0), fmt(r["ttft_p50_ms"], 0),
         fmt(r["ttft_p99_ms"], 0), sum(r["errors"].values()), _shares(r["shares"]),
         " / ".join(f"{v:.1f}" for v in r["mean_in_flight"].values()), _cores(r["cpu"])]
        for r in results["runs"]
    ]  # fmt: skip
    return lines + _table(
        ["load", "policy", "rate λ req/s", "offered req/s", "achieved req/s", "requests", "p50 ms", "p99 ms",
         "TTFT p50", "TTFT p99", "errors", "share", "in flight", "CPU cores (ours / workers / other / steal)"],
        rows, "--" + "r" * 9 + "---",
    )  # fmt: skip


def _equal(results: Mapping[str, Any]) -> list[str]:
    cfg = results["config"]
    lines = [
        "",
        f"## Equal workers ({cfg['equal_load']:.0%} load)",
        "",
    ]
    rows = [
        [f"`{r['policy']}`", fmt(r["target_rps"], 1), fmt(r["offered_rps"], 1), fmt(r["throughput_rps"], 1),
         f"{r['requests']:,}",
         fmt(r["p50_ms"], 0), fmt(r["p99_ms"], 0), _shares(r["shares"]), fmt(r["max_share"], 2), _cores(r["cpu"])]
        for r in results["equal_runs"]
    ]  # fmt: skip
    return lines + _table(
        ["policy", "rate λ req/s", "offered req/s", "achieved req/s", "requests", "p50 ms", "p99 ms", "share",
         "max share", "CPU cores (ours / workers / other / steal)"],
        rows, "-rrrrrr-r-",
    )  # fmt: skip


def _overhead(results: Mapping[str, Any]) -> list[str]:
    cfg = results["config"]
    ov = results["overhead"]
    lines = ["", "## Dispatcher overhead", ""]
    rows: list[list[Any]] = []
    for label, key in (("(a) in process, non-streamed", "complete"), ("(a) in process, streamed", "stream")):
        o = ov["in_process"][key]
        rows.append([label, f"{o['n']:,}", fmt(o["direct_median_us"], 0), fmt(o["dispatched_median_us"], 0),
                     fmt(o["overhead_ms"], 3)])  # fmt: skip
    if ov.get("end_to_end"):
        o = ov["end_to_end"]
        rows.append(["(b) zero-delay worker process, non-streamed", f"{o['n']:,}", fmt(o["direct_median_us"], 0),
                     fmt(o["dispatched_median_us"], 0), fmt(o["overhead_ms"], 3)])  # fmt: skip
    lines += _table(["measurement", "calls each", "direct µs (median)", "dispatched µs (median)", "overhead ms"], rows)
    stream = ov["in_process"]["stream"]
    chunks = cfg["max_tokens"] + 1  # one chunk per token plus the finish chunk
    lines += [
        "",
        "The JSON's `dispatcher_overhead_ms` is (a), non-streamed. The direct path does what a caller would do "
        "without the dispatcher (POST, check the status, parse the JSON); the dispatcher adds admission, the "
        "policy, deadlines, per-worker accounting and Prometheus metrics. A stream costs more: "
        f"{fmt(stream['overhead_ms'], 3)} ms over {chunks} chunks is {fmt(stream['overhead_ms'] * 1000 / chunks, 0)} "
        "µs per chunk. End to end (b), the difference is within the noise of a real HTTP round trip (a negative "
        "figure means below it).",
        "",
    ]
    return lines


def _kill_drill(results: Mapping[str, Any]) -> list[str]:
    kd = results["kill_drill"]
    bk = kd["by_kind"]
    return [
        "## Kill one of three",
        "",
        f"- {kd['requests']:,} requests over {kd['duration_s']:.1f} s ({kd['target_rps']:.1f} req/s offered, "
        f"{kd['load']:.0%} of {kd['capacity_rps']:.1f}); policy `{kd['policy']}`; {kd['victim']} SIGKILLed at "
        f"{kd['kill_s']:.1f} s, restarted at {kd['restart_s']:.1f} s.",
        f"- **Success rate {fmt((kd['success_rate'] or 0) * 100, 2)} %** (non-streamed "
        f"{bk['complete']['ok']:,}/{bk['complete']['requests']:,}, streamed {bk['stream']['ok']:,}/"
        f"{bk['stream']['requests']:,}); errors seen by callers: {_counted(kd['errors'])}; attempts retried on "
        f"another worker: {kd['retries']}; worker errors by kind: {_counted(kd['worker_error_kinds'])}.",
        f"- Dead worker still sent requests for ≤ **{fmt(kd['removal_s'], 2)} s** after the kill "
        f"({kd['attempts_after_kill']} attempts, each failed over or counted above); marked unhealthy after "
        f"{fmt(kd['marked_out_s'], 2)} s.",
        f"- Restarted process answered `/health` {fmt(kd['ready_after_restart_s'], 1)} s after its spawn; it got "
        f"traffic again **{fmt(kd['return_s'], 2)} s** after the restart, i.e. "
        f"{fmt(kd['return_after_ready_s'], 2)} s after it could serve (the dispatcher notices at its next health "
        "check).",
        f"- Latency over the drill (p50 / p99 ms): non-streamed {fmt(bk['complete']['p50_ms'], 0)} / "
        f"{fmt(bk['complete']['p99_ms'], 0)}, streamed {fmt(bk['stream']['p50_ms'], 0)} / "
        f"{fmt(bk['stream']['p99_ms'], 0)}. CPU cores (ours / workers / other / steal): {_cores(kd['cpu'])} "
        "(the restart's torch import is in the workers' share).",
        "- The dispatcher's log during the drill: "
        + (
            "; ".join(f"{e['t_s']:.2f} s {e['message']} ({e['worker']})" for e in kd.get("dispatcher_log", [])[:8])
            or "nothing"
        )
        + ".",
        "",
        "## Scenario choices",
        "",
        *(f"- {note}" for note in SCENARIO_NOTES),
        "",
    ]


def _cpu_use(results: Mapping[str, Any]) -> list[str]:
    cpu = results["cpu"]
    return [
        "## CPU use",
        "",
        f"- Mean over the whole run: {cpu['mean_cores']:.2f} of {cpu['logical_cores']} cores "
        f"({cpu['cpu_s']:.0f} CPU-s / {cpu['wall_s']:.0f} s, worker start-ups included).",
        f"- Busiest measured window: {fmt(cpu['max_run_cores_ours'], 2)} cores used by this benchmark "
        f"(driver ≤ {fmt(cpu['max_run_driver_cores'], 2)}), {fmt(cpu['max_run_cores_machine'], 2)} by the whole "
        "machine. The load generator's lag behind the planned arrivals: p99 ≤ "
        f"{fmt(cpu.get('max_arrival_lag_p99_ms'), 1)} ms in every run (`arrival_lag_p99_ms` per run in the JSON).",
        "- Time per phase (s): "
        + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.0f}" for k, v in results.get("phases_s", {}).items())
        + ".",
    ]


def _heading(title: str, row: Mapping[str, Any] | None) -> tuple[list[str], bool]:
    """A section's heading, and whether its body follows (False: not measured or skipped, said under the heading)."""
    head = ["", f"## {title}", ""]
    if row is None:
        return [*head, "Not measured in this run.", ""], False
    if "skipped" in row:
        return [*head, f"Skipped: {row['skipped']}.", ""], False
    return head, True


def _sessions(results: Mapping[str, Any]) -> list[str]:
    row = results.get("sessions")
    head, measured = _heading("Sessions on a SIMULATED prefix cache", row)
    if not measured or row is None:
        return head
    cfg = results["config"]
    lines = [
        *head,
        f"> **SIMULATED prefix cache**: each worker (cache-1…3, the fast delay model) keeps an LRU of "
        f"{cfg['cache_tokens']:,} prompt words of message prefixes; an uncached prompt word costs "
        f"{cfg['prefill_ms']:g} ms before the first token, a cached one nothing (as vLLM's automatic prefix caching "
        "or llama.cpp's slot cache would save). The hit rate is what the workers reported in their answers.",
        "",
        f"{cfg['session_count']} sessions (Poisson, {cfg['session_rate']:g}/s) of {cfg['session_turns']} streamed "
        f"turns each: a {cfg['system_words']}-word system prompt, {cfg['context_words']} words of product cards in "
        f"the first turn, {cfg['followup_words']} more words a turn, a pause of {cfg['think_s']:g} s on average "
        "between an answer and the next turn; the session id goes in OpenAI's `user` field, which `affinity` "
        "hashes on its ring (power of two when the home worker would pass 1.25× its share of the load). Latency "
        "and TTFT from the moment a turn is sent. Token hit rate = cached / prompt words; follow-up hit rate = "
        "follow-up turns whose worker still held at least half of their prompt.",
        "",
    ]
    rows = [
        [f"`{r['policy']}`", f"{r['requests']:,}", sum(r["errors"].values()), fmt(r["token_hit_rate"] * 100, 1),
         fmt((r["followup_hit_rate"] or 0) * 100, 1), fmt(r["p50_ms"], 0), fmt(r["p99_ms"], 0),
         fmt(r["ttft_p50_ms"], 0), fmt(r["ttft_p99_ms"], 0), fmt(r["throughput_rps"], 1), _shares(r["shares"]),
         _cores(r["cpu"])]
        for r in row["runs"]
    ]  # fmt: skip
    return lines + _table(
        ["policy", "turns", "errors", "token hit %", "follow-up hit %", "p50 ms", "p99 ms", "TTFT p50", "TTFT p99",
         "req/s", "share", "CPU cores (ours / workers / other / steal)"],
        rows, "-" + "r" * 9 + "--",
    )  # fmt: skip


def _ms(v: Any) -> str:
    return fmt(v, 0) if v is not None else "–"


def litellm_verdict(row: Mapping[str, Any]) -> str:
    """Whether to put LiteLLM behind the ``Dispatcher`` interface, from the figures measured.

    Adopt only if it costs at most 1 ms a request more than the dispatcher, its best strategy's p99 is
    within 1.2× the dispatcher's, and under overload it either refuses work or keeps p99 within 1.5×.
    """
    ov, lat = row["overhead"], row["latency"]
    t_ms, l_ms = ov["tandem"]["overhead_ms"], ov["litellm"]["overhead_ms"]
    t_p99 = lat["tandem_power_of_two"]["p99_ms"]
    best = min((r for k, r in lat.items() if k.startswith("litellm_") and r.get("p99_ms") is not None),
               key=lambda r: r["p99_ms"], default=None)  # fmt: skip
    kill_t, kill_l = row["kill"]["tandem_power_of_two"], row["kill"]["litellm_simple-shuffle"]
    over_t, over_l = row["overload"]["tandem_power_of_two"], row["overload"]["litellm_least-busy"]
    cheap = l_ms is not None and t_ms is not None and l_ms <= t_ms + 1.0
    fast = best is not None and t_p99 is not None and best["p99_ms"] <= 1.2 * t_p99
    bounded = over_l["refused_429"] > 0 or (
        over_l["p99_ms"] is not None and over_t["p99_ms"] is not None and over_l["p99_ms"] <= 1.5 * over_t["p99_ms"]
    )
    reasons = [
        f"it costs {fmt(l_ms, 2)} ms a request against the dispatcher's {fmt(t_ms, 2)} ms",
        f"its best p99 at {lat['load']:.0%} load was {_ms(best['p99_ms'] if best else None)} ms against "
        f"{_ms(t_p99)} ms (its CPU cost sits in the caller's event loop: see the sender lag)",
        f"at {row['overload']['offered']:g}× capacity it refused {over_l['refused_429']} and its p99 reached "
        f"{_ms(over_l['p99_ms'])} ms, where the dispatcher refused {over_t['refused_429']} at once (429, median "
        f"{_ms(over_t['refusal_p50_ms'])} ms) and kept p99 at {_ms(over_t['p99_ms'])} ms",
        f"with a worker killed callers saw {kill_l['errors_after_kill']} error(s) through LiteLLM (p99 "
        f"{_ms(kill_l['p99_ms_after_kill'])} ms just after) and {kill_t['errors_after_kill']} through the dispatcher "
        f"(p99 {_ms(kill_t['p99_ms_after_kill'])} ms; its errors are streams cut after their first token, which "
        "no router can retry unseen)",
    ]
    if cheap and fast and bounded:
        return "LiteLLM could sit behind the `Dispatcher` interface on these figures: " + "; ".join(reasons) + "."
    return (
        "Do not adopt LiteLLM behind the `Dispatcher` interface: " + "; ".join(reasons) + ". What it adds is a "
        "catalogue of hosted providers (keys, spend tracking), which Tandem's self-hosted workers do not need; "
        "the bounded queue, deadlines and 429s would have to be kept in front of it anyway."
    )


def _litellm(results: Mapping[str, Any]) -> list[str]:
    row = results.get("litellm_router")
    head, measured = _heading("LiteLLM Router against the dispatcher", row)
    if not measured or row is None:
        return head
    lat, ov, kill, over = row["latency"], row["overhead"], row["kill"], row["overload"]
    lines = [
        *head,
        f"LiteLLM {row.get('litellm_version')} (imported in {fmt(row.get('import_s'), 1)} s), `litellm.Router` with "
        "each SIMULATED worker as an `openai/…` deployment at its `api_base`, `num_retries=2` (the dispatcher "
        "makes up to 3 attempts), in this process beside the dispatcher, on the same workers and the same seeded "
        "arrivals.",
        "",
        f"**Latency**: heterogeneous workers ({', '.join(lat['workers'])}) at {lat['load']:.0%} load "
        f"({fmt(lat['target_rps'], 1)} req/s), every request streamed; from the planned arrival.",
        "",
    ]
    rows = [
        [f"`{name}`", f"{r['requests']:,}", sum(r["errors"].values()), _ms(r["p50_ms"]), _ms(r["p99_ms"]),
         _ms(r["ttft_p50_ms"]), _ms(r["ttft_p99_ms"]), fmt(r["arrival_lag_p99_ms"], 1), _cores(r["cpu"])]
        for name, r in lat.items() if isinstance(r, Mapping)
    ]  # fmt: skip
    lines += ["*Sender lag* = how late the load generator sent its requests: a router's CPU cost in the caller's "
              "event loop delays everything in that loop, and latency runs from the planned arrival.", ""]  # fmt: skip
    lines += _table(["router", "requests", "errors", "p50 ms", "p99 ms", "TTFT p50", "TTFT p99",
                     "sender lag p99 ms", "CPU cores (ours / workers / other / steal)"], rows, "-rrrrrrr-")  # fmt: skip
    lines += ["", "**Overhead** per non-streamed request against the zero-delay worker (sequential, interleaved "
              "blocks; median dispatched − median direct):", ""]  # fmt: skip
    rows = [[f"`{k}`", f"{o['n']:,}", fmt(o["direct_median_us"], 0), fmt(o["dispatched_median_us"], 0),
             fmt(o["overhead_ms"], 3)] for k, o in ov.items()]  # fmt: skip
    lines += _table(["router", "calls", "direct µs", "routed µs", "overhead ms"], rows)
    lines += ["", f"**A worker dies**: {', '.join(kill['workers'])} at {kill['load']:.0%} load, half streamed; "
              f"{kill['victim']} SIGKILLed mid-run and left dead. *Errors after kill* = errors that ended after it "
              "(streams it cut included); *failures until* = when the last one ended, from the kill. A stream that "
              "ends without a finish reason counts as `TruncatedStreamError`.", ""]  # fmt: skip
    rows = [[f"`{k}`", f"{r['requests']:,}", fmt((r["success_rate"] or 0) * 100, 2), r["errors_after_kill"],
             _counted(r["errors"]), fmt(r["failures_until_s"], 2), _ms(r["p99_ms_after_kill"])]
            for k, r in kill.items() if isinstance(r, Mapping)]  # fmt: skip
    lines += _table(["router", "requests", "success %", "errors after kill", "errors", "failures until s",
                     "p99 ms, 2 s after kill"], rows, "-rrr-rr")  # fmt: skip
    lines += ["", f"**Overload**: {over['offered']:g}× the capacity of {', '.join(over['workers'])} "
              f"({fmt(over['target_rps'], 1)} req/s), non-streamed. The dispatcher: one request per slot in flight "
              f"and a queue of {over['queue']}; what it cannot queue is refused at once (`OverloadedError`, which "
              "the API answers 429 + Retry-After).", ""]  # fmt: skip
    rows = [[f"`{k}`", f"{r['requests']:,}", f"{r['ok']:,}", r["refused_429"], _counted(r["other_errors"]),
             _ms(r["p50_ms"]), _ms(r["p99_ms"]), _ms(r["refusal_p50_ms"]), fmt(r["wall_s"], 1)]
            for k, r in over.items() if isinstance(r, Mapping)]  # fmt: skip
    lines += _table(["router", "requests", "answered", "refused (429)", "other errors", "p50 ms", "p99 ms",
                     "refusal p50 ms", "until drained s"], rows, "-rrr-rrrr")  # fmt: skip
    return [*lines, "", f"**Verdict**: {litellm_verdict(row)}", ""]


def _real_engines(results: Mapping[str, Any]) -> list[str]:
    row = results.get("real_engines")
    head, measured = _heading("Real engines: llama.cpp with SmolLM2-135M", row)
    if not measured or row is None:
        return head
    kill = row["kill"]
    lines = [
        *head,
        f"**Not simulated**: {row['engines']} × {row['engine']} serving {row['model']}, behind the dispatcher over "
        f"HTTP (streamed chat completions, {row['max_tokens']} tokens, greedy; five buyers' questions in turn, "
        "the buyer in OpenAI's `user`, which `affinity` routes by). Service time alone (median): "
        + ", ".join(f"{n} {v * 1000:.0f} ms" for n, v in row["service_s"].items())
        + f"; capacity {fmt(row['capacity_rps'], 2)} req/s; each policy at {row['load']:.0%} of it "
        f"({fmt(row['target_rps'], 2)} req/s, Poisson).",
        "",
    ]
    rows = [[f"`{r['policy']}`", f"{r['requests']:,}", sum(r["errors"].values()), _ms(r["p50_ms"]), _ms(r["p99_ms"]),
             _ms(r["ttft_p50_ms"]), _shares(r["shares"])] for r in row["runs"]]  # fmt: skip
    lines += _table(["policy", "requests", "errors", "p50 ms", "p99 ms", "TTFT p50", "share"], rows, "-rrrrr-")
    lines += [
        "",
        f"**Kill**: `{kill['policy']}`, {kill['victim']} SIGKILLed at {kill['kill_s']:.1f} s: "
        f"{fmt((kill['success_rate'] or 0) * 100, 2)} % of {kill['requests']} requests succeeded; errors seen by "
        f"callers: {_counted(kill['errors'])}; attempts retried on another engine: {kill['retries']}; the victim "
        f"{'was' if kill['victim_marked_unhealthy'] else 'was not'} marked unhealthy; p99 in the 2 s after the kill "
        f"{_ms(kill['p99_ms_after_kill'])} ms.",
        "",
    ]
    return lines


_SECTIONS: tuple[Callable[[Mapping[str, Any]], list[str]], ...] = (
    _intro,
    _targets,
    _method,
    _workers,
    _heterogeneous,
    _equal,
    _overhead,
    _kill_drill,
    _sessions,
    _litellm,
    _real_engines,
    _cpu_use,
)


def markdown(results: Mapping[str, Any]) -> str:
    """The report's markdown (without the plot's line, which :func:`write_report` adds when there is a plot)."""
    return "\n".join(line for section in _SECTIONS for line in section(results)) + "\n"


def _latency_panel(ax: Any, runs: Sequence[Mapping[str, Any]]) -> None:
    for policy in POLICIES:
        rs = sorted((r for r in runs if r["policy"] == policy.value and r["p99_ms"]), key=lambda r: r["load"])
        loads = [r["load"] * 100 for r in rs]
        (line,) = ax.plot(loads, [r["p99_ms"] for r in rs], marker="o", label=f"{policy.value} p99")
        ax.plot(
            loads, [r["p50_ms"] for r in rs], ls="--", color=line.get_color(), alpha=0.6, label=f"{policy.value} p50"
        )
    ax.set_yscale("log")
    ax.set_xlabel("load, % of pool capacity")
    ax.set_ylabel("latency ms (planned arrival → last chunk)")
    ax.set_title("Heterogeneous workers (fast, fast, 4× slower)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _share_bars(ax: Any, rows: Sequence[Mapping[str, Any]], title: str, fair: float | None) -> None:
    if not rows:
        return
    names = list(rows[0]["shares"])
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, [r["shares"][n] * 100 for n in names], width, label=r["policy"])
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(names))], names)
    if fair is not None:
        ax.axhline(fair * 100, color="k", lw=1, ls=":", label="fair share")
        ax.axhline(fair * 100 * MAX_SHARE_MAX, color="r", lw=1, ls=":", label=f"{MAX_SHARE_MAX:g}× fair share")
    ax.set_ylabel("share of traffic, %")
    ax.set_title(title)
    ax.legend(fontsize=8)


def _kill_panel(ax: Any, kd: Mapping[str, Any]) -> None:
    samples = kd["samples"]
    if len(samples) <= 2:
        return
    times = [s[0] for s in samples]
    window = 5  # samples: a 0.5 s moving rate
    for name in samples[0][1]:
        counts = [s[1].get(name, 0) for s in samples]
        rate = [(counts[i] - counts[i - window]) / (times[i] - times[i - window]) for i in range(window, len(samples))]
        # Plotted at each window's middle, so a drop shows where it happened, not half a window late.
        mid = [(times[i] + times[i - window]) / 2 for i in range(window, len(samples))]
        ax.plot(mid, rate, label=name)
    ax.axvline(kd["kill_s"], color="r", ls="--", label="SIGKILL")
    ax.axvline(kd["restart_s"], color="g", ls="--", label="restart")
    if kd["ready_after_restart_s"] is not None:
        ax.axvline(kd["restart_s"] + kd["ready_after_restart_s"], color="g", ls=":", label="answers /health")
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests dispatched per s (0.5 s window)")
    ax.set_title(f"Kill one of three: success {(kd['success_rate'] or 0):.2%}")
    ax.legend(fontsize=8)


def _plot(results: Mapping[str, Any], path: Path) -> bool:
    """p99 latency vs load (log y), per-worker shares at the headline load and with equal workers, the kill drill."""
    try:
        import matplotlib  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return False
    runs = results["runs"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    _latency_panel(axes[0][0], runs)
    load = results["config"]["headline_load"]
    heterogeneous = [r for r in runs if r["load"] == load]
    _share_bars(axes[0][1], heterogeneous, f"Traffic share, heterogeneous, {load:.0%} load", None)
    eq = results["equal_runs"]
    fair = 1 / len(eq[0]["shares"]) if eq and eq[0]["shares"] else None
    _share_bars(axes[1][0], eq, f"Traffic share, equal workers, {results['config']['equal_load']:.0%} load", fair)
    _kill_panel(axes[1][1], results["kill_drill"])
    fig.suptitle(f"Tandem LLM dispatcher — SIMULATED model ({SIMULATED_NOTE})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results: Mapping[str, Any], reports_dir: Path, name: str = REPORT_NAME) -> dict[str, Path]:
    """``NAME.json``, ``NAME.md`` and ``NAME.png`` in ``reports_dir``."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": reports_dir / f"{name}.json", "markdown": reports_dir / f"{name}.md"}
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    text = markdown(results)
    png = reports_dir / f"{name}.png"
    if _plot(results, png):
        paths["png"] = png
        text += f"\n![p99 latency by load, traffic shares, kill drill]({png.name})\n"
    paths["markdown"].write_text(text, encoding="utf-8")
    return paths
