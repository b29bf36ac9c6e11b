"""LLM serving benchmark: the dispatcher in front of real worker processes whose model is SIMULATED.

``tandem bench llm [--quick] [--reports DIR]`` (``make bench-llm``) measures what the
balancing policies of :class:`llms.dispatcher.Dispatcher` do to latency when GPU workers are
uneven, what the dispatcher costs per request, and what a worker crash costs the caller.

What is real and what is not: every worker is a real ``tandem worker --simulate`` process on
127.0.0.1 (uvicorn, FastAPI, OpenAI chat-completions over HTTP and SSE), and the dispatcher,
its queue, policies, health checks and retries are the production code. Only the model is
SIMULATED: each worker draws a per-request service time from its delay model (a lognormal,
heavy right tail) and emits synthetic tokens paced over it, at most ``--slots`` requests at
once (the others wait inside the worker, as they would for a GPU batch slot). The figures
therefore measure queueing and balancing, not a model; the report says so everywhere.

Method:

1. **Workers.** Four fast workers (speed 1), one four times slower (speed 0.25), same
   lognormal shape (median 150 ms, sigma 0.8, so a mean of 207 ms and a p99 of 0.96 s on a
   fast worker), 4 slots each; the dispatcher allows 16 requests in flight per worker, as
   operators set vLLM's ``max_num_seqs`` generously. A zero-delay worker serves the
   end-to-end overhead measurement. All start at once and are killed at the end, whatever
   happens (Ctrl-C and SIGTERM included).
2. **Capacity** of a pool = sum over its workers of slots / mean service time (the delay
   model's analytic mean). Load levels are fractions of it.
3. **Heterogeneous scenario** (fast, fast, slow): for each load level, each policy
   (round-robin, least outstanding, power of two) on a fresh :class:`Dispatcher`, an
   OPEN-LOOP Poisson arrival process (arrivals do not wait for answers, so queueing shows
   up as latency instead of being hidden by a closed loop). The same seeded schedule is
   replayed for every policy at a load level and policies are interleaved, so they see the
   same arrivals and the same machine. Every request is streamed (16 tokens). Requests
   arriving in the first ``warmup_s`` seconds are sent but not counted. Latency runs from
   the request's *planned* arrival to its last chunk (queueing included; measuring from the
   planned time avoids coordinated omission should the generator ever fall behind, and the
   generator's lag is reported), TTFT from the planned arrival to the first chunk.
   Throughput counts answers completed inside the measured window. Traffic shares come
   from the dispatcher's per-worker request counters over the window.
4. **Equal workers** (four fast ones) at 60 % load: ``max_share`` = the busiest worker's
   share of traffic / its fair share (1/4).
5. **Dispatcher overhead**: (a) in process, with an instant ``httpx.MockTransport``: the
   median time of a sequential ``Dispatcher.complete()`` minus the median of the same POST
   made directly with an ``httpx.AsyncClient`` on the same transport (interleaved blocks, so
   drift hits both); the same for a 16-token stream; (b) end to end against the zero-delay
   worker, dispatched against direct.
6. **Kill one of three**: three fast workers at 60 % load, half non-streamed calls (as the
   ranker makes) and half streamed (as the explainer), power of two (the default policy),
   health checks every 0.5 s. After ``kill_at_s`` one worker is SIGKILLed, and restarted on
   the same port ``restart_after_s`` later (a fresh process: it imports torch, ~5 s). The
   dispatcher's worker snapshots are sampled every 100 ms to time how long the dead
   worker still got traffic and how soon after the restart it got traffic again.
7. **Reports**: ``llm_serving.json`` (the headline keys ``policies``,
   ``dispatcher_overhead_ms``, ``kill_one_of_three_success_rate``, plus every run),
   ``llm_serving.md`` (machine, method, delay models, tables, targets with PASS/MISS) and
   ``llm_serving.png``.

CPU: the machine this was written for has 2 cores; the load generator and the dispatcher
share one process (one event loop) and each worker is a process. Every run reports the CPU
cores used by the driver, by the workers and by other processes, so a reader can check the
CPU was not the bottleneck.

Modules: :mod:`~eval.bench_llm.config` (constants, :class:`BenchConfig`, the workers),
:mod:`~eval.bench_llm.measure` (arrivals, percentiles, shares, summaries),
:mod:`~eval.bench_llm.targets`, :mod:`~eval.bench_llm.workers` (the processes, the CPU meter),
:mod:`~eval.bench_llm.load` (the load runs and the kill drill), :mod:`~eval.bench_llm.overhead`,
:mod:`~eval.bench_llm.run`, :mod:`~eval.bench_llm.report` and :mod:`~eval.bench_llm.cli`.

Example:
    >>> results = run(BenchConfig.quick_config(), reports_dir=Path("/tmp/llm"))  # doctest: +SKIP
    >>> sorted(results["policies"])  # doctest: +SKIP
    ['least_outstanding', 'power_of_two', 'round_robin']
"""

from __future__ import annotations

from eval.bench_llm.cli import main
from eval.bench_llm.config import (
    HEADLINE_KEYS,
    KILL_POOL,
    MODEL,
    POLICIES,
    BenchConfig,
    BenchError,
    WorkerSpec,
    delay_spec,
    pool_capacity_rps,
    worker_specs,
)
from eval.bench_llm.load import kill_drill, run_load
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
from eval.bench_llm.overhead import measure_overhead_end_to_end, measure_overhead_in_process
from eval.bench_llm.report import write_report
from eval.bench_llm.run import run
from eval.bench_llm.targets import (
    KILL_SUCCESS_MIN,
    MAX_SHARE_MAX,
    OVERHEAD_MAX_MS,
    P99_RATIO_MIN,
    check_shape,
    evaluate_targets,
    headline_policies,
)
from eval.bench_llm.workers import WorkerPool

__all__ = [
    "HEADLINE_KEYS",
    "KILL_POOL",
    "KILL_SUCCESS_MIN",
    "MAX_SHARE_MAX",
    "MODEL",
    "OVERHEAD_MAX_MS",
    "P99_RATIO_MIN",
    "POLICIES",
    "BenchConfig",
    "BenchError",
    "RequestRecord",
    "WorkerPool",
    "WorkerSpec",
    "check_shape",
    "delay_spec",
    "evaluate_targets",
    "headline_policies",
    "kill_drill",
    "kill_timeline",
    "main",
    "max_share_ratio",
    "mean_in_flight",
    "measure_overhead_end_to_end",
    "measure_overhead_in_process",
    "percentile",
    "poisson_schedule",
    "pool_capacity_rps",
    "run",
    "run_load",
    "summarise_requests",
    "traffic_shares",
    "worker_specs",
    "write_report",
]
