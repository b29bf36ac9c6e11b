"""The benchmark's pure measurements: Poisson arrivals, percentiles, traffic shares and request summaries.

What a run's raw data (:class:`RequestRecord` per request, the dispatcher's worker snapshots)
becomes: latency and TTFT percentiles, throughput, each worker's share of the traffic, mean
requests in flight, and the kill drill's timeline; no I/O, so each is tested on its own.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.bench_llm.config import Sample

__all__ = [
    "RequestRecord",
    "kill_timeline",
    "max_share_ratio",
    "mean_in_flight",
    "percentile",
    "poisson_schedule",
    "round_floats",
    "summarise_requests",
    "traffic_shares",
]


def poisson_schedule(rate_rps: float, duration_s: float, rng: random.Random) -> list[float]:
    """Arrival times (seconds from 0) of a Poisson process of ``rate_rps`` over ``[0, duration_s)``."""
    if rate_rps <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    times: list[float] = []
    t = rng.expovariate(rate_rps)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate_rps)
    return times


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (NumPy's linear interpolation); ``None`` for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within [0, 100], got {q}")
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q, method="linear"))


def traffic_shares(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, float]:
    """Each worker's share of the requests dispatched between two counter snapshots (sums to 1, or all 0)."""
    deltas = {name: max(0, count - before.get(name, 0)) for name, count in after.items()}
    total = sum(deltas.values())
    if total == 0:
        return dict.fromkeys(deltas, 0.0)
    return {name: d / total for name, d in deltas.items()}


def max_share_ratio(shares: Mapping[str, float]) -> float:
    """The busiest worker's share divided by its fair share (1 / number of workers): 1.0 is perfectly even."""
    if not shares:
        raise ValueError("no workers")
    return max(shares.values()) * len(shares)


def mean_in_flight(samples: Sequence[Sample], start_s: float, end_s: float) -> dict[str, float]:
    """Mean requests in flight per worker over the samples taken within ``[start_s, end_s]``."""
    inside = [s for t, s in samples if start_s <= t <= end_s]
    if not inside:
        return {}
    names = inside[0].keys()
    return {n: sum(s[n][1] for s in inside if n in s) / len(inside) for n in names}


@dataclass(frozen=True)
class RequestRecord:
    """One request as the caller saw it; times in seconds from the run's start."""

    scheduled_s: float  # planned (Poisson) arrival
    lag_s: float  # how late the generator actually sent it
    kind: str  # "stream" or "complete"
    end_s: float
    latency_s: float | None  # planned arrival → last chunk / answer; None when it failed
    ttft_s: float | None  # planned arrival → first chunk (streams only)
    error: str | None = None  # exception class name
    worker: str | None = None  # non-streamed calls only (a stream does not say)


def summarise_requests(records: Sequence[RequestRecord], start_s: float, end_s: float) -> dict[str, Any]:
    """Latency, TTFT, throughput and errors of the requests planned within ``[start_s, end_s)``."""
    if end_s <= start_s:
        raise ValueError("empty window")
    window = end_s - start_s
    measured = [r for r in records if start_s <= r.scheduled_s < end_s]
    ok = [r for r in measured if r.error is None and r.latency_s is not None]
    errors = Counter(r.error for r in measured if r.error is not None)
    latency = [r.latency_s * 1000 for r in ok if r.latency_s is not None]
    ttft = [r.ttft_s * 1000 for r in ok if r.ttft_s is not None]
    lag = [r.lag_s * 1000 for r in measured]
    done = sum(1 for r in records if r.error is None and start_s <= r.end_s <= end_s)
    return {
        "requests": len(measured),
        "ok": len(ok),
        "errors": dict(sorted(errors.items())),
        "overloaded": errors.get("OverloadedError", 0),
        "success_rate": len(ok) / len(measured) if measured else None,
        "offered_rps": len(measured) / window,
        "throughput_rps": done / window,
        "p50_ms": percentile(latency, 50),
        "p90_ms": percentile(latency, 90),
        "p99_ms": percentile(latency, 99),
        "max_ms": max(latency) if latency else None,
        "mean_ms": statistics.fmean(latency) if latency else None,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "arrival_lag_p99_ms": percentile(lag, 99),
        "arrival_lag_max_ms": max(lag) if lag else None,
    }


def kill_timeline(samples: Sequence[Sample], victim: str, kill_s: float, restart_s: float) -> dict[str, Any]:
    """When the killed worker stopped getting traffic and when the restarted one got it again.

    From the dispatcher's snapshots (every ~100 ms, so each time is an upper bound within
    one sampling interval): ``removal_s`` = first sample after the kill from which the
    victim's request counter no longer grows before the restart, minus the kill time;
    ``attempts_after_kill`` = requests it was still sent (each failed and was retried or
    counted as an error); ``marked_out_s`` = first sample showing it unhealthy;
    ``return_s`` = first sample after the restart where its counter grows, minus the restart
    time; ``healthy_again_s`` likewise for its health flag.
    """
    ordered = sorted(samples, key=lambda s: s[0])
    before = [s for t, s in ordered if t <= kill_s and victim in s]
    down = [(t, s) for t, s in ordered if kill_s < t < restart_s and victim in s]
    after = [(t, s) for t, s in ordered if t >= restart_s and victim in s]
    base = before[-1][victim][0] if before else 0
    out: dict[str, Any] = {
        "removal_s": None,
        "attempts_after_kill": None,
        "marked_out_s": None,
        "return_s": None,
        "healthy_again_s": None,
    }
    if down:
        final = down[-1][1][victim][0]
        out["attempts_after_kill"] = final - base
        stable = next(t for t, s in down if s[victim][0] == final)
        out["removal_s"] = stable - kill_s
        out["marked_out_s"] = next((t - kill_s for t, s in down if not s[victim][2]), None)
        base = final
    if after:
        out["return_s"] = next((t - restart_s for t, s in after if s[victim][0] > base), None)
        was_out = any(not s[victim][2] for _, s in down)
        if was_out:
            out["healthy_again_s"] = next((t - restart_s for t, s in after if s[victim][2]), None)
    return out


def round_floats(value: Any, digits: int = 1) -> Any:
    """``value`` with every float rounded to ``digits`` (a non-finite one becomes ``None``: JSON has no inf)."""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [round_floats(v, digits) for v in value]
    return value
