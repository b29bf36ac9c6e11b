"""Load test of the recommendation API: Locust against ``tandem serve``, beside the raw encoder, in one run.

``python -m eval.loadtest`` (``make loadtest``) reproduces the reference system's method —
Locust, photo-URL requests end to end (image download → inference → top-K), 50 concurrent
users — on this machine, and measures in the same run what the image encoder alone can do,
so the service's overhead is a number rather than a guess:

1. if the embedded index (or Tandem's own image tower) is missing, ``tandem demo [--limit N]``
   builds it first (what ``make run`` does);
2. ``ids`` product photos are picked at random from the catalogue's ``images/`` folder and
   served by a local image server (:func:`serve_images`, a subprocess on 127.0.0.1), so the
   API's fetch stage is real HTTP;
3. the **raw encoder** (:func:`api.components.build_image_encoder`) encodes the same decoded
   photos in batches of 32 (and of 1) for ``raw_s`` seconds, before anything of ours loads the
   CPU (before it and before each Locust run, the driver waits up to ``quiet_wait_s`` for other
   processes to leave the CPU, and reports what they still used);
4. the API starts as a subprocess (``tandem serve``) with a random API key and loopback
   image URLs allowed (``TANDEM_STORAGE__URL_ALLOW=127.0.0.1``; SSRF protection refuses them
   otherwise), and is warmed up once ``GET /readyz`` answers 200;
5. Locust (``eval/locustfile.py``, headless, one process) runs three times: one user without
   think time; 50 users with the reference's think time; 50 users without think time
   (saturation). Users start at ``spawn_rate`` per second and the statistics are reset once
   all run (``--reset-stats``): the figures are the steady state. ``GET /metrics`` is scraped
   around each run;
6. ``eval/reports/api_loadtest.{md,json,png}``: the machine, the reference beside our figures,
   every target with PASS/MISS, the raw encoder throughput and the API/encoder ratio.

Think time: the reference reports ~40 requests/s with 50 users at a 210 ms mean latency
without naming its think time; by Little's law (throughput = users / (latency + think time))
that is 50 / 40 − 0.21 ≈ 1.04 s, reproduced here with a uniform 0.5–1.5 s wait.

The pure parts (the client payload and checks used by the locustfile, Locust's CSV output,
Prometheus text, targets and report) import nothing heavy; torch is loaded only by the raw
encoder measurement.

Example:
    >>> from api.settings import get_settings
    >>> results = run(get_settings(), LoadtestConfig.quick_config(), reports_dir=Path("/tmp/lt"))  # doctest: +SKIP
    >>> results["runs"]["saturation"]["stats"]["rps"]  # doctest: +SKIP
    150.3
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import math
import os
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from api.settings import Settings

__all__ = [
    "ENV_IDS_FILE",
    "ENV_IMAGE_BASE",
    "ENV_KEY",
    "ENV_SUMMARY",
    "ENV_TOP_K",
    "ENV_WAIT",
    "RECOMMEND_PATH",
    "REFERENCE",
    "ClientConfig",
    "LoadtestConfig",
    "LoadtestError",
    "MetricsSnapshot",
    "build_payload",
    "check_response",
    "clean_error",
    "ensure_index",
    "evaluate_targets",
    "free_port",
    "index_missing",
    "load_ids",
    "main",
    "mean_batch_size",
    "measure_encoder",
    "metrics_delta",
    "parse_failures_csv",
    "parse_history_csv",
    "parse_prometheus",
    "parse_stats_csv",
    "parse_wait",
    "pick_ids",
    "run",
    "run_title",
    "serve_images",
    "stage_means_ms",
    "summarise_locust_entry",
    "tower_missing",
    "wait_for_quiet",
    "write_report",
]

# --------------------------------------------------------------------------- #
# Constants: the reference, the targets, the client's environment
# --------------------------------------------------------------------------- #

RECOMMEND_PATH = "/v1/recommendations"

ENV_IMAGE_BASE = "TANDEM_LOADTEST_IMAGE_BASE"
ENV_IDS_FILE = "TANDEM_LOADTEST_IDS_FILE"
ENV_KEY = "TANDEM_LOADTEST_KEY"
ENV_WAIT = "TANDEM_LOADTEST_WAIT"
ENV_TOP_K = "TANDEM_LOADTEST_TOP_K"
ENV_SUMMARY = "TANDEM_LOADTEST_SUMMARY"

REFERENCE: dict[str, Any] = {
    "system": "reference paper: RTX 3090 GPU, Locust, photo URL → download → inference → top-K",
    "mean_ms": 210.0,
    "p95_ms": 280.0,
    "rps": 40.0,
    "users": 50,
    "error_rate_max": 0.005,
}

# Think time of the reference, derived (not stated): Little's law, 50 users / 40 req/s − 0.21 s.
REFERENCE_THINK_S: tuple[float, float] = (0.5, 1.5)


def run_title(name: str, users: int) -> str:
    """How the report names a run: ``single``, ``think`` (the reference's think time) or ``saturation``."""
    who = f"{users} user" + ("s" if users != 1 else "")
    return {
        "single": f"{who}, no think time",
        "think": f"{who}, reference think time",
        "saturation": f"{who}, no think time (saturation)",
    }.get(name, f"{name} ({who})")


def _title(runs: Mapping[str, Any], name: str) -> str:
    entry = runs.get(name) or {}
    return str(entry.get("title") or run_title(name, int(entry.get("users") or (1 if name == "single" else 50))))


MIN_RAW_RATIO = 0.8

_WARMUP_REQUESTS = 10
# Cores taken by other processes during a phase above which the report says so.
_OTHER_LOAD_NOTE = 0.25
# The API's busiest threads recorded per run.
_TOP_THREADS = 6


class LoadtestError(RuntimeError):
    """The load test cannot go on (the API did not start, a warm-up request failed, ...)."""


# --------------------------------------------------------------------------- #
# Client side: what eval/locustfile.py sends and checks (no locust import here)
# --------------------------------------------------------------------------- #


def parse_wait(text: str | None) -> tuple[float, float]:
    """Think time from ``TANDEM_LOADTEST_WAIT``: ``""``/``"0"`` = none, ``"1"`` = 1 s, ``"0.5-1.5"`` = uniform.

    >>> parse_wait("0.5-1.5"), parse_wait("0"), parse_wait("2")
    ((0.5, 1.5), (0.0, 0.0), (2.0, 2.0))
    """
    raw = (text or "").strip()
    if not raw:
        return 0.0, 0.0
    lo_text, sep, hi_text = raw.partition("-")
    try:
        lo = float(lo_text)
        hi = float(hi_text) if sep else lo
    except ValueError as exc:
        raise ValueError(f"think time {raw!r} is not 'S' or 'MIN-MAX' in seconds") from exc
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi < lo:
        raise ValueError(f"think time {raw!r} needs 0 <= MIN <= MAX")
    return lo, hi


def load_ids(path: Path) -> list[str]:
    """Product ids, one per line (blank lines ignored); an empty file is an error."""
    ids = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path} lists no product id")
    return ids


def build_payload(image_base: str, product_id: str, top_k: int) -> dict[str, Any]:
    """The JSON body of one request: the photo ``<image_base>/<id>.jpg`` and ``top_k``.

    >>> build_payload("http://127.0.0.1:8001/", "123", 10)
    {'image_url': 'http://127.0.0.1:8001/123.jpg', 'top_k': 10}
    """
    return {"image_url": f"{image_base.rstrip('/')}/{quote(product_id)}.jpg", "top_k": top_k}


def check_response(status: int, body: Any, top_k: int) -> str | None:
    """Why an answer is a failure (``None`` when it is a good one): not 200, not JSON, no items, too many."""
    if status != 200:
        detail = ""
        if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
            detail = f" ({body['error'].get('code', '?')})"
        return f"HTTP {status}{detail}"
    if not isinstance(body, Mapping):
        return "the answer is not a JSON object"
    items = body.get("items")
    if not isinstance(items, list):
        return "the answer has no 'items' list"
    if not items:
        return "the answer has no item"
    if len(items) > top_k:
        return f"{len(items)} items for top_k={top_k}"
    return None


@dataclass(frozen=True)
class ClientConfig:
    """The locustfile's settings, from the environment the driver gives it."""

    image_base: str
    ids: list[str]
    api_key: str
    wait: tuple[float, float]
    top_k: int = 10
    summary_path: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClientConfig:
        missing = [name for name in (ENV_IMAGE_BASE, ENV_IDS_FILE, ENV_KEY) if not env.get(name)]
        if missing:
            raise ValueError(f"the locustfile needs {', '.join(missing)} (python -m eval.loadtest sets them)")
        top_k = int(env.get(ENV_TOP_K) or 10)
        if top_k <= 0:
            raise ValueError(f"{ENV_TOP_K} must be positive, got {top_k}")
        summary = env.get(ENV_SUMMARY)
        return cls(
            image_base=env[ENV_IMAGE_BASE],
            ids=load_ids(Path(env[ENV_IDS_FILE])),
            api_key=env[ENV_KEY],
            wait=parse_wait(env.get(ENV_WAIT)),
            top_k=top_k,
            summary_path=Path(summary) if summary else None,
        )

    def payload(self, rng: random.Random) -> dict[str, Any]:
        """A request for a product photo drawn uniformly from :attr:`ids`."""
        return build_payload(self.image_base, rng.choice(self.ids), self.top_k)


def _pct_key(column: str) -> str:
    """``"95%"`` → ``"p95_ms"``, ``"99.9%"`` → ``"p99_9_ms"``."""
    return "p" + column.strip().rstrip("%").replace(".", "_") + "_ms"


def _readable_percentile(p: float) -> str:
    """Locust's column name of a percentile: 0.95 → ``"95%"``, 0.999 → ``"99.9%"``."""
    return f"{p * 100:.6g}%"


def clean_error(text: str) -> str:
    """A failure's message without Locust's wrapper: ``CatchResponseError('HTTP 503')`` → ``HTTP 503``.

    >>> clean_error("CatchResponseError('HTTP 502 (upstream)')")
    'HTTP 502 (upstream)'
    """
    match = re.fullmatch(r"CatchResponseError\((['\"])(.*)\1\)", text.strip(), flags=re.DOTALL)
    return match.group(2) if match else text


def summarise_locust_entry(
    entry: Any, percentiles: Sequence[float], errors: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Final statistics of a Locust ``StatsEntry`` (the ``Aggregated`` one), in :func:`parse_stats_csv`'s keys.

    The locustfile writes this when Locust quits: the stats CSV is written once a second and can
    miss the last second of a run; this is exact.
    """
    n = int(entry.num_requests)
    stats: dict[str, Any] = {
        "requests": n,
        "failures": int(entry.num_failures),
        "error_rate": (int(entry.num_failures) / n) if n else None,
        "median_ms": float(entry.median_response_time) if n else None,
        "mean_ms": float(entry.avg_response_time) if n else None,
        "min_ms": float(entry.min_response_time or 0) if n else None,
        "max_ms": float(entry.max_response_time) if n else None,
        "rps": float(entry.total_rps),
        "fail_per_s": float(entry.total_fail_per_sec),
    }
    for p in percentiles:
        stats[_pct_key(_readable_percentile(p))] = float(entry.get_response_time_percentile(p)) if n else None
    stats["errors"] = [{**e, "error": clean_error(str(e.get("error", "")))} for e in errors]
    return stats


# --------------------------------------------------------------------------- #
# Locust's CSV output
# --------------------------------------------------------------------------- #


def _num(text: str | None) -> float | None:
    if text is None:
        return None
    text = text.strip()
    if not text or text.upper() == "N/A":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_rows(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def parse_stats_csv(path: Path, name: str = "Aggregated") -> dict[str, Any]:
    """The ``name`` row (default ``Aggregated``) of Locust's ``<prefix>_stats.csv``.

    Keys: ``requests, failures, error_rate, median_ms, mean_ms, min_ms, max_ms, rps,
    fail_per_s`` and one ``p<N>_ms`` per percentile column (``50%`` → ``p50_ms``,
    ``99.9%`` → ``p99_9_ms``); ``N/A`` becomes ``None``. Raises :class:`ValueError` when the
    row is missing.
    """
    for row in _read_rows(path):
        if (row.get("Name") or "").strip() != name:
            continue
        requests = int(_num(row.get("Request Count")) or 0)
        failures = int(_num(row.get("Failure Count")) or 0)
        stats: dict[str, Any] = {
            "requests": requests,
            "failures": failures,
            "error_rate": failures / requests if requests else None,
            "median_ms": _num(row.get("Median Response Time")) if requests else None,
            "mean_ms": _num(row.get("Average Response Time")) if requests else None,
            "min_ms": _num(row.get("Min Response Time")) if requests else None,
            "max_ms": _num(row.get("Max Response Time")) if requests else None,
            "rps": _num(row.get("Requests/s")) or 0.0,
            "fail_per_s": _num(row.get("Failures/s")) or 0.0,
        }
        for column, value in row.items():
            if column and column.strip().endswith("%"):
                stats[_pct_key(column)] = _num(value) if requests else None
        return stats
    raise ValueError(f"{path} has no {name!r} row")


def parse_history_csv(path: Path, name: str = "Aggregated") -> list[dict[str, Any]]:
    """The ``name`` rows of Locust's ``<prefix>_stats_history.csv``, one per second, in time order.

    Each row: ``t`` (seconds since the first row), ``timestamp``, ``users``, ``rps``,
    ``fail_per_s`` (Locust's current rates), the current ``p50_ms``, ``p95_ms``, ``p99_ms``
    (``None`` before the first answer) and the running ``total_requests`` and ``total_failures``.
    ``interval_rps`` is the throughput since the previous row, from the running count (``None``
    on the first row and where the count went down: statistics reset). Repeated timestamps (Locust
    may write one twice) are kept once.
    """
    rows: list[dict[str, Any]] = []
    seen: set[tuple[float, float]] = set()
    for row in _read_rows(path):
        if (row.get("Name") or "").strip() != name:
            continue
        ts = _num(row.get("Timestamp"))
        if ts is None:
            continue
        total = _num(row.get("Total Request Count")) or 0.0
        if (ts, total) in seen:
            continue
        seen.add((ts, total))
        rows.append(
            {
                "timestamp": ts,
                "users": int(_num(row.get("User Count")) or 0),
                "rps": _num(row.get("Requests/s")) or 0.0,
                "fail_per_s": _num(row.get("Failures/s")) or 0.0,
                "p50_ms": _num(row.get("50%")),
                "p95_ms": _num(row.get("95%")),
                "p99_ms": _num(row.get("99%")),
                "total_requests": int(total),
                "total_failures": int(_num(row.get("Total Failure Count")) or 0),
            }
        )
    rows.sort(key=lambda r: (r["timestamp"], r["total_requests"]))
    start = rows[0]["timestamp"] if rows else 0.0
    previous: dict[str, Any] | None = None
    for r in rows:
        r["t"] = r["timestamp"] - start
        # Throughput over the last interval, from the running count (Locust's own "current" rate lags).
        dt = r["timestamp"] - previous["timestamp"] if previous is not None else 0.0
        grown = r["total_requests"] - previous["total_requests"] if previous is not None else -1
        # No rate across a reset of the statistics (Locust --reset-stats once every user is started).
        r["interval_rps"] = grown / dt if dt > 0 and grown >= 0 else None
        previous = r
    return rows


def parse_failures_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of Locust's ``<prefix>_failures.csv``: ``method, name, error, occurrences``."""
    return [
        {
            "method": row.get("Method", ""),
            "name": row.get("Name", ""),
            "error": clean_error(row.get("Error", "")),
            "occurrences": int(_num(row.get("Occurrences")) or 0),
        }
        for row in _read_rows(path)
    ]


# --------------------------------------------------------------------------- #
# Prometheus text from GET /metrics
# --------------------------------------------------------------------------- #

LabelSet = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MetricsSnapshot:
    """One scrape: family types and every sample value by (sample name, labels)."""

    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, LabelSet], float] = field(default_factory=dict)

    def get(self, name: str, labels: LabelSet = ()) -> float:
        return self.samples.get((name, labels), 0.0)


def parse_prometheus(text: str) -> MetricsSnapshot:
    """Parse Prometheus text exposition (``GET /metrics``). Raises :class:`ValueError` on malformed text."""
    from prometheus_client.parser import text_string_to_metric_families

    types: dict[str, str] = {}
    samples: dict[tuple[str, LabelSet], float] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return MetricsSnapshot(types, samples)


def _skip_family(name: str) -> bool:
    # Interpreter internals are noise here; the process CPU counter is worth keeping.
    return name.startswith(("python_", "process_")) and name != "process_cpu_seconds"


def metrics_delta(before: MetricsSnapshot | None, after: MetricsSnapshot) -> dict[str, Any]:
    """What happened between two scrapes (``before=None``: since the service started).

    ``histograms``: per histogram/summary and label set (``le`` aside), the observations
    ``count``, their ``sum`` and ``mean``; ``counters``: per counter and label set, the
    increase. Only what changed is listed; gauges are left out.
    """
    base = before or MetricsSnapshot()
    histograms: list[dict[str, Any]] = []
    counters: list[dict[str, Any]] = []
    for family, kind in sorted(after.types.items()):
        if _skip_family(family):
            continue
        if kind in ("histogram", "summary"):
            for (sample, labels), value in sorted(after.samples.items()):
                if sample != f"{family}_count":
                    continue
                count = value - base.get(sample, labels)
                if count <= 0:
                    continue
                total = after.get(f"{family}_sum", labels) - base.get(f"{family}_sum", labels)
                histograms.append(
                    {"name": family, "labels": dict(labels), "count": count, "sum": total, "mean": total / count}
                )
        elif kind == "counter":
            for (sample, labels), value in sorted(after.samples.items()):
                if sample not in (f"{family}_total", family):
                    continue
                delta = value - base.get(sample, labels)
                if delta != 0:
                    counters.append({"name": family, "labels": dict(labels), "value": delta})
    return {"histograms": histograms, "counters": counters}


def mean_batch_size(delta: Mapping[str, Any] | None) -> float | None:
    """Mean encoder batch size from a histogram named like ``*batch_size*`` (``None`` without one)."""
    if not delta:
        return None
    rows = [h for h in delta.get("histograms", []) if "batch_size" in h["name"]]
    count = sum(h["count"] for h in rows)
    return sum(h["sum"] for h in rows) / count if count > 0 else None


def stage_means_ms(delta: Mapping[str, Any] | None) -> dict[str, float]:
    """Mean time per pipeline stage (ms) from a ``*_seconds`` histogram labelled ``stage``."""
    if not delta:
        return {}
    return {
        h["labels"]["stage"]: h["mean"] * 1e3
        for h in delta.get("histograms", [])
        if "stage" in h["labels"] and h["name"].endswith("_seconds")
    }


# --------------------------------------------------------------------------- #
# Targets
# --------------------------------------------------------------------------- #


def _stat(runs: Mapping[str, Any], run: str, key: str) -> float | None:
    entry = runs.get(run) or {}
    value = (entry.get("stats") or {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def evaluate_targets(runs: Mapping[str, Any], raw_images_per_s: float | None) -> list[dict[str, Any]]:
    """Every target with what was measured and ``passed`` (``None`` when the run or figure is missing).

    Targets: one user — mean ≤ 100 ms and p95 ≤ 150 ms; 50 users (with the reference's think
    time, and without: saturation) — ≥ 40 req/s, p95 ≤ 500 ms and no failed request; API
    throughput at saturation ≥ 80% of the raw encoder's (batch 32) images/s.
    """
    rows: list[dict[str, Any]] = []

    def add(target: str, run: str, value: float | None, ok: Callable[[float], bool], unit: str) -> None:
        rows.append(
            {
                "target": target,
                "run": run,
                "measured": value,
                "unit": unit,
                "passed": None if value is None else ok(value),
            }
        )

    add("mean latency ≤ 100 ms", "single", _stat(runs, "single", "mean_ms"), lambda v: v <= 100, "ms")
    add("p95 latency ≤ 150 ms", "single", _stat(runs, "single", "p95_ms"), lambda v: v <= 150, "ms")
    for run in ("think", "saturation"):
        add("throughput ≥ 40 req/s", run, _stat(runs, run, "rps"), lambda v: v >= 40, "req/s")
        add("p95 latency ≤ 500 ms", run, _stat(runs, run, "p95_ms"), lambda v: v <= 500, "ms")
        add("no failed request", run, _stat(runs, run, "failures"), lambda v: v == 0, "failures")
    ratio = None
    sat = _stat(runs, "saturation", "rps")
    if sat is not None and raw_images_per_s:
        ratio = sat / raw_images_per_s
    add(
        f"API throughput ≥ {MIN_RAW_RATIO:.0%} of the raw encoder's",
        "saturation",
        ratio,
        lambda v: v >= MIN_RAW_RATIO,
        "×",
    )
    return rows


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1000 else f"{value:,.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    marks = [("---:" if (align[i : i + 1] or "l") == "r" else "---") for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(c if isinstance(c, str) else _fmt(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("**PASS**" if passed else "**MISS**")


def _measured(row: Mapping[str, Any]) -> str:
    value = row.get("measured")
    if value is None:
        return "–"
    unit = row.get("unit", "")
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "failures":
        return f"{int(value):,}"
    return f"{value:,.1f} {unit}"


def _reference_think_s() -> float:
    """The think time the reference's figures imply by Little's law: users / throughput − mean latency."""
    return float(REFERENCE["users"] / REFERENCE["rps"] - REFERENCE["mean_ms"] / 1000)


def _think_label(think: Sequence[float] | None) -> str:
    if not think or max(think) == 0:
        return "none"
    lo, hi = think
    return f"{lo:g} s" if lo == hi else f"uniform {lo:g}–{hi:g} s"


def _quiet_label(quiet: Mapping[str, Any] | None) -> str:
    if not quiet:
        return "not checked"
    return f"others {quiet.get('other_cores', 0):.2f} cores after {quiet.get('waited_s', 0):.0f} s"


def _error_rate(stats: Mapping[str, Any]) -> str:
    rate = stats.get("error_rate")
    return "–" if rate is None else f"{stats.get('failures', 0):,} ({rate:.2%})"


def _markdown(results: Mapping[str, Any]) -> str:
    machine = results.get("machine") or {}
    config = results.get("config") or {}
    runs: Mapping[str, Any] = results.get("runs") or {}
    raw = results.get("raw_encoder") or {}
    lines = ["# Recommendation API under load (Locust)", ""]
    if config.get("quick"):
        lines += ["**Quick mode: runs of a few seconds, for a smoke test; the figures are not representative.**", ""]
    load = machine.get("load_average_1_5_15m")
    lines += [
        f"Machine: {machine.get('cpu', '?')}, {machine.get('logical_cores', '?')} logical cores, "
        f"{machine.get('ram_gb', '?')} GB RAM, GPU: {machine.get('gpu', '?')}; torch {machine.get('torch', '?')}, "
        f"Python {machine.get('python', '?')}; load average at the start {load}; "
        f"generated {results.get('generated_at', '?')}.",
        "",
        "## Method",
        "",
        f"- Each simulated buyer (`eval/locustfile.py`, a Locust `FastHttpUser`) POSTs "
        f'`{{"image_url": "http://127.0.0.1:PORT/<id>.jpg", "top_k": {config.get("top_k", 10)}}}` to '
        f"`{RECOMMEND_PATH}` with an `X-API-Key`; the API downloads the photo from a local image server "
        "(`eval.loadtest.serve_images`: a threaded HTTP/1.1 file server on 127.0.0.1; real HTTP, no internet "
        "latency), decodes it, encodes it with the "
        "image tower (micro-batched with concurrent requests), searches the index and answers the top K. "
        "A request counts as failed unless the answer is 200 with JSON holding 1 to K `items`.",
        f"- Photos: {config.get('ids', '?')} catalogue products drawn at random (seed {config.get('seed', '?')}) from "
        f"`{config.get('images_dir', '?')}` (60×80 JPEGs), each request one of them at random.",
        f"- Service: `tandem serve` on 127.0.0.1, image encoder `{config.get('image_encoder', '?')}` on "
        f"{config.get('device', '?')}, retrieval mode {config.get('mode', '?')}, index `{config.get('index', '?')}`; "
        f"API settings {json.dumps(config.get('api') or {})}.",
        f"- **Think time (an assumption)**: the reference gives ~{REFERENCE['rps']:.0f} req/s with "
        f"{REFERENCE['users']} users at a {REFERENCE['mean_ms']:.0f} ms mean but no think time; by Little's law "
        f"(throughput = users / (latency + think time)) it is {REFERENCE['users']} / {REFERENCE['rps']:.0f} − "
        f"{REFERENCE['mean_ms'] / 1000:.2f} ≈ {_reference_think_s():.2f} s, "
        f"reproduced with a {_think_label(config.get('think_s'))} wait between a user's requests.",
        f"- One machine for everything: the API, Locust (one process) and the image server share its "
        f"{machine.get('logical_cores', '?')} cores (CPU used by each below). The reference ran on an RTX 3090 with "
        "its own model: the figures stand side by side, they are not a like-for-like comparison.",
        "",
    ]
    lines += _table(
        ["run", "users", "spawn rate /s", "ramp-up s (not counted)", "think time", "measured s", "CPU quiet before"],
        [
            [
                _title(runs, name),
                r.get("users"),
                r.get("spawn_rate"),
                r.get("ramp_s"),
                _think_label(r.get("think_s")),
                r.get("duration_s"),
                _quiet_label((results.get("quiet") or {}).get(name)),
            ]
            for name, r in runs.items()
        ],
        "lrrrlrl",
    )
    lines += [
        "Users start at the spawn rate; Locust's statistics are reset once all are running (`--reset-stats`), "
        "so every figure below is the steady state. Before each measurement the driver waits (up to "
        f"{config.get('quiet_wait_s', '?')} s) for other processes to leave the CPU; the last column says what "
        "they still used.",
        "",
    ]

    lines += ["## Reference against Tandem", ""]
    names = list(runs)
    header = ["", "reference (RTX 3090, 50 users)", *[_title(runs, n) for n in names]]

    def row(label: str, ref: Any, key: str, fmt: Callable[[Mapping[str, Any]], Any] | None = None) -> list[Any]:
        cells: list[Any] = [label, ref]
        for n in names:
            stats = runs[n].get("stats") or {}
            cells.append(fmt(stats) if fmt else stats.get(key))
        return cells

    batch_row: list[Any] = ["mean encoder batch size (/metrics)", "–"]
    cpu_rows: dict[str, list[Any]] = {
        k: [label, "–"]
        for k, label in (
            ("api", "CPU cores used: API"),
            ("locust", "CPU cores used: Locust"),
            ("image_server", "CPU cores used: image server"),
            ("other", "CPU cores used: other processes"),
        )
    }
    for n in names:
        batch_row.append(mean_batch_size(runs[n].get("metrics")))
        cpu = runs[n].get("cpu") or {}
        for k, cells in cpu_rows.items():
            cells.append(cpu.get(k))
    lines += _table(
        header,
        [
            row("requests", "–", "requests"),
            row("failed (rate)", f"< {REFERENCE['error_rate_max']:.1%}", "", _error_rate),
            row("mean ms", REFERENCE["mean_ms"], "mean_ms"),
            row("p50 ms", "–", "p50_ms"),
            row("p95 ms", REFERENCE["p95_ms"], "p95_ms"),
            row("p99 ms", "–", "p99_ms"),
            row("max ms", "–", "max_ms"),
            row("requests/s", f"~{REFERENCE['rps']:.0f}", "rps"),
            batch_row,
            *cpu_rows.values(),
        ],
        "l" + "r" * (len(header) - 1),
    )
    lines += [
        "Latencies are Locust's, end to end from the client (percentiles approximated by Locust: exact to the "
        "millisecond below 100 ms, to 10 ms up to 1 s). Requests/s is Locust's: requests over the run's duration.",
        "",
    ]

    lines += ["## Targets", ""]
    lines += _table(
        ["target", "run", "measured", "result"],
        [
            [t["target"], _title(runs, t["run"]), _measured(t), _verdict(t.get("passed"))]
            for t in results.get("targets") or []
        ],
        "llrl",
    )

    lines += ["## Raw encoder throughput (same run, before the API started)", ""]
    if not raw:
        lines += ["Not measured.", ""]
    else:
        lines += [
            f"`{raw.get('model_id', '?')}` built by `api.components.build_image_encoder`, on the same "
            f"{raw.get('images', '?')} photos decoded beforehand ({raw.get('decode_images_per_s', 0):,.0f} decodes/s "
            "with `retrieval.images.decode_image`), encoded (preprocessing + forward pass) batch after batch, with "
            f"torch on every core and on the service's own thread count ({raw.get('service_threads', '?')}: "
            "`tandem serve` leaves a core to its event loop); CPU before: "
            f"{_quiet_label((results.get('quiet') or {}).get('raw_encoder'))}.",
            "",
        ]
        lines += _table(
            [
                "torch threads",
                "batch",
                "images/s",
                "ms per batch (mean)",
                "ms per batch (p95)",
                "batches",
                "seconds",
                "cores used",
                "other processes' cores",
            ],
            [
                [
                    b.get("threads"),
                    b.get("batch_size"),
                    b.get("images_per_s"),
                    b.get("mean_ms"),
                    b.get("p95_ms"),
                    b.get("batches"),
                    b.get("seconds"),
                    b.get("cores_used"),
                    b.get("other_cores"),
                ]
                for b in raw.get("batches") or []
            ],
            "rrrrrrrrr",
        )
        sat = _stat(runs, "saturation", "rps")
        batch = raw.get("reference_batch", 32)
        for label, key, target in (
            ("every core", "images_per_s", True),
            ("the service's thread count", "service_threads_images_per_s", False),
        ):
            denominator = raw.get(key)
            if sat is None or not denominator:
                continue
            tail = f" (target ≥ {MIN_RAW_RATIO:.2f}×)" if target else " (for reference)"
            bold = "**" if target else ""
            lines += [
                f"- API at saturation / raw encoder on {label} (batch {batch}): {sat:,.1f} req/s / "
                f"{denominator:,.1f} images/s = {bold}{sat / denominator:.2f}×{bold}{tail}."
            ]
        lines += [""]

    lines += ["## Inside the service (`GET /metrics`)", ""]
    if not any(runs[n].get("metrics") for n in names):
        lines += ["The service exposed no parsable `/metrics`; nothing recorded.", ""]
    else:
        stages = sorted({s for n in names for s in stage_means_ms(runs[n].get("metrics"))})
        if stages:
            lines += ["Mean time per stage inside the service (ms), per run:", ""]
            lines += _table(
                ["run", *stages],
                [[_title(runs, n), *[stage_means_ms(runs[n].get("metrics")).get(s) for s in stages]] for n in names],
                "l" + "r" * len(stages),
            )
        counter_rows = [
            [_title(runs, n), c["name"], ", ".join(f"{k}={v}" for k, v in c["labels"].items()), c["value"]]
            for n in names
            for c in (runs[n].get("metrics") or {}).get("counters", [])
        ]
        if counter_rows:
            lines += ["Counters, increase during each run:", ""]
            lines += _table(["run", "counter", "labels", "increase"], counter_rows, "lllr")

    thread_rows = [
        [
            _title(runs, n),
            f"{sum(t['cores'] for t in runs[n]['api_threads']):.2f}",
            ", ".join(f"{t['thread']} {t['cores']:.2f}" for t in runs[n]["api_threads"]),
        ]
        for n in names
        if runs[n].get("api_threads")
    ]
    if thread_rows:
        lines += [
            "The API process's busiest threads (CPU cores over the run; Linux thread names, so Python threads all "
            "read as the process name): one thread near 1.0 is a serial bottleneck; Python threads that together "
            "stay near one core while cores are free point at the GIL.",
            "",
        ]
        lines += _table(["run", "sum of these", "threads (cores)"], thread_rows, "lrl")

    lines += ["## Errors", ""]
    error_rows = [
        [_title(runs, n), e.get("method", ""), e.get("name", ""), e.get("error", ""), e.get("occurrences")]
        for n in names
        for e in runs[n].get("errors") or []
    ]
    lines += _table(["run", "method", "name", "error", "count"], error_rows, "llllr") if error_rows else ["None.", ""]

    notes = list(results.get("notes") or [])
    busy = [
        f"{_title(runs, n)} ({runs[n]['cpu']['other']:.2f})"
        for n in names
        if (runs[n].get("cpu") or {}).get("other", 0) >= _OTHER_LOAD_NOTE
    ]
    busy += [
        f"raw encoder, {b.get('threads', '?')} thread(s), batch {b.get('batch_size')} ({b['other_cores']:.2f})"
        for b in raw.get("batches") or []
        if b.get("other_cores", 0) >= _OTHER_LOAD_NOTE
    ]
    if busy:
        notes.append(
            "Other processes on the machine used CPU cores during: " + "; ".join(busy) + ". The figures of those "
            "phases are lower than an otherwise idle machine would give."
        )
    think = runs.get("think") or {}
    stats = think.get("stats") or {}
    if stats.get("mean_ms") and think.get("think_s") and think.get("users"):
        expected = think["users"] / (sum(think["think_s"]) / 2 + stats["mean_ms"] / 1000)
        notes.append(
            f"Little's law check of the think-time run: {think['users']} users / (mean think "
            f"{sum(think['think_s']) / 2:g} s + mean latency {stats['mean_ms'] / 1000:.3f} s) = {expected:.1f} req/s "
            f"expected, {stats.get('rps', 0):.1f} measured."
        )
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def _plot(runs: Mapping[str, Any], path: Path) -> bool:
    """Latency percentiles and throughput over time, one line per run; ``False`` when there is no history."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = {n: r.get("history") or [] for n, r in runs.items()}
    if not any(series.values()):
        return False
    fig = Figure(figsize=(8.0, 6.4), dpi=120)
    FigureCanvasAgg(fig)
    ax_lat, ax_rps = fig.subplots(2, 1, sharex=True)
    colours = {"single": "tab:green", "think": "tab:blue", "saturation": "tab:red"}
    for name, hist in series.items():
        if not hist:
            continue
        colour = colours.get(name)
        t = [h["t"] for h in hist]
        label = _title(runs, name)
        p50 = [h["p50_ms"] if h["p50_ms"] is not None else math.nan for h in hist]
        p95 = [h["p95_ms"] if h["p95_ms"] is not None else math.nan for h in hist]
        ax_lat.plot(t, p50, color=colour, linestyle="-", label=f"{label}: p50")
        ax_lat.plot(t, p95, color=colour, linestyle="--", label=f"{label}: p95")
        rps = [h.get("interval_rps") for h in hist]
        ax_rps.plot(t, [r if r is not None else math.nan for r in rps], color=colour, label=label)
    ramp = max((r.get("ramp_s") or 0) for r in runs.values())
    if ramp:
        for ax in (ax_lat, ax_rps):
            ax.axvspan(0, ramp, color="grey", alpha=0.1, label="ramp-up (not counted)" if ax is ax_rps else None)
    ax_lat.axhline(REFERENCE["p95_ms"], color="grey", linestyle=":", label="reference p95 (280 ms)")
    ax_lat.axhline(500, color="black", linestyle=":", linewidth=0.8, label="target p95 at 50 users (500 ms)")
    ax_lat.set_ylabel("latency, ms (Locust, current)")
    ax_lat.set_yscale("log")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend(fontsize=6, ncol=2, loc="lower right")
    ax_rps.axhline(REFERENCE["rps"], color="grey", linestyle=":", label="reference (~40 req/s)")
    ax_rps.set_ylabel("requests/s (per history interval)")
    ax_rps.set_xlabel("seconds since the run started")
    ax_rps.grid(True, alpha=0.3)
    ax_rps.legend(fontsize=7)
    ax_lat.set_title("Recommendation API under Locust: latency and throughput over time")
    fig.tight_layout()
    fig.savefig(path)
    return True


def write_report(results: Mapping[str, Any], reports_dir: Path, name: str = "api_loadtest") -> dict[str, Path]:
    """Write ``name.json``, ``name.md`` and (with Locust history) ``name.png``; return their paths by kind."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": reports_dir / f"{name}.json", "markdown": reports_dir / f"{name}.md"}
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    markdown = _markdown(results)
    png = reports_dir / f"{name}.png"
    if _plot(results.get("runs") or {}, png):
        paths["png"] = png
        markdown += f"\n![latency and throughput over time]({png.name})\n"
    paths["markdown"].write_text(markdown, encoding="utf-8")
    return paths


# --------------------------------------------------------------------------- #
# Processes: image server, API, Locust
# --------------------------------------------------------------------------- #


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _venv_script(name: str) -> str:
    """``name`` next to the running interpreter (the project's .venv), else on PATH."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise LoadtestError(f"cannot find the {name!r} command (run `make setup`)")
    return found


class _Service:
    """A subprocess in its own session (Ctrl-C reaches only the driver), output to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and its children so far (0 once it is gone)."""
        import psutil

        try:
            proc = psutil.Process(self.proc.pid)
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
            return total
        except psutil.Error:
            return 0.0

    def thread_cpu_seconds(self) -> dict[int, tuple[str, float]]:
        """CPU time of each thread of the process so far: thread id → (thread name, seconds)."""
        import psutil

        try:
            threads = psutil.Process(self.proc.pid).threads()
        except psutil.Error:
            return {}
        out: dict[int, tuple[str, float]] = {}
        for t in threads:
            try:
                name = Path(f"/proc/{self.proc.pid}/task/{t.id}/comm").read_text(encoding="utf-8").strip()
            except OSError:
                name = "?"
            out[t.id] = (name, t.user_time + t.system_time)
        return out

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGINT (a graceful stop for uvicorn), then SIGTERM, then SIGKILL."""
        try:
            for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0)):
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=wait)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=5)
        finally:
            self._fh.close()


def serve_images(directory: Path | str, port: int, host: str = "127.0.0.1") -> None:
    """Serve ``directory`` over HTTP/1.1 (keep-alive, no Nagle delay, a deep listen backlog, no access log).

    ``python -m http.server`` would do, but its backlog of 5 connections makes a burst of
    concurrent downloads wait for TCP's 1 s SYN retransmission, and without keep-alive every
    download pays a connection: both would be charged to the API's fetch stage.
    """
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            return

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024
        daemon_threads = True

    handler = functools.partial(Handler, directory=str(directory))
    with Server((host, port), handler) as server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


_IMAGE_SERVER_CODE = "import sys; from eval.loadtest import serve_images; serve_images(sys.argv[1], int(sys.argv[2]))"


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O) since boot."""
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _own_cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(
    max_wait_s: float, *, threshold_cores: float = 0.25, window_s: float = 2.0, own: Sequence[_Service] = ()
) -> dict[str, float]:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold_cores`` CPU cores.

    "Other" is everything but this process, its reaped children and the ``own`` services, over
    windows of ``window_s`` seconds. Returns ``waited_s`` and the last window's ``other_cores``.
    On a shared machine this keeps a neighbour's burst out of the measurements when it can.
    """
    t0 = time.perf_counter()
    while True:
        busy = _busy_cpu_seconds()
        mine = _own_cpu_seconds(resource.RUSAGE_SELF) + _own_cpu_seconds(resource.RUSAGE_CHILDREN)
        services = sum(x.cpu_seconds() for x in own)
        start = time.perf_counter()
        time.sleep(window_s)
        elapsed = time.perf_counter() - start
        busy = _busy_cpu_seconds() - busy
        mine = _own_cpu_seconds(resource.RUSAGE_SELF) + _own_cpu_seconds(resource.RUSAGE_CHILDREN) - mine
        services = sum(x.cpu_seconds() for x in own) - services
        other = max(busy - mine - services, 0.0) / elapsed
        waited = time.perf_counter() - t0
        if other < threshold_cores or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "other_cores": round(other, 2)}


def _wait_http(url: str, service: _Service, timeout_s: float, headers: Mapping[str, str] | None = None) -> float:
    """Poll ``url`` until it answers 200; seconds waited. Raises with the log's tail if the process dies."""
    import httpx

    t0 = time.perf_counter()
    last = "no answer"
    while True:
        if not service.alive():
            tail = _tail(service.log)
            hint = ""
            if "Can't init WAL" in tail or "WouldBlock" in tail:
                hint = (
                    "\nThe embedded Qdrant Edge index is open in another process (a running `tandem serve`, "
                    "`tandem index`, a test?): one process at a time can hold it. Stop it, or give this run "
                    "another TANDEM_HOME."
                )
            raise LoadtestError(
                f"{service.name} exited with code {service.proc.returncode} before {url} answered; "
                f"the end of its output ({service.log}):\n{tail}{hint}"
            )
        try:
            resp = httpx.get(url, headers=dict(headers or {}), timeout=5.0)
            if resp.status_code == 200:
                return time.perf_counter() - t0
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{exc.__class__.__name__}: {exc}"
        if time.perf_counter() - t0 > timeout_s:
            raise LoadtestError(
                f"{url} did not answer 200 within {timeout_s:.0f} s (last: {last}); "
                f"the end of {service.name}'s output ({service.log}):\n{_tail(service.log)}"
            )
        time.sleep(0.5)


def _scrape(base_url: str, key: str) -> MetricsSnapshot | None:
    """``GET /metrics`` parsed, or ``None`` when the service has none (or answers something else)."""
    import httpx

    try:
        resp = httpx.get(f"{base_url}/metrics", headers={"X-API-Key": key}, timeout=10.0)
        if resp.status_code != 200:
            return None
        return parse_prometheus(resp.text)
    except (httpx.HTTPError, ValueError):
        return None


# --------------------------------------------------------------------------- #
# Steps
# --------------------------------------------------------------------------- #


def index_missing(settings: Settings) -> bool:
    """The embedded index has no manifest (a Qdrant server, ``TANDEM_QDRANT__URL``, is not checked)."""
    from retrieval.store import manifest_path

    return settings.qdrant.url is None and not manifest_path(settings.qdrant_dir).is_file()


def tower_missing(settings: Settings) -> bool:
    """Tandem's own image tower is the configured encoder but is not trained yet."""
    enc = settings.encoders
    own = enc.image_checkpoint is None and enc.image_model is None
    return own and not (settings.tower_dir / "open_clip_config.json").is_file()


def ensure_index(settings: Settings, limit: int | None, echo: Callable[[str], None]) -> str | None:
    """Run ``tandem demo [--limit N]`` when the index or the image tower is missing; what was run, or ``None``."""
    if not (index_missing(settings) or tower_missing(settings)):
        return None
    argv = [_venv_script("tandem"), "demo", *(["--limit", str(limit)] if limit else [])]
    echo(f"no index or no image tower under {settings.home}: running {' '.join(argv[1:])} first")
    done = subprocess.run(argv, check=False)
    if done.returncode != 0:
        raise LoadtestError(f"`tandem {' '.join(argv[1:])}` failed with exit code {done.returncode}")
    return " ".join(["tandem", *argv[1:]])


def pick_ids(images_dir: Path, n: int, seed: int) -> list[str]:
    """``n`` product ids (sorted) with a ``<id>.jpg`` in ``images_dir``, drawn at random with ``seed``."""
    if n <= 0:
        raise ValueError("the number of product ids must be positive")
    ids = sorted(p.stem for p in Path(images_dir).glob("*.jpg"))
    if not ids:
        raise LoadtestError(f"no <id>.jpg photo in {images_dir}")
    return sorted(random.Random(seed).sample(ids, min(n, len(ids))))


def service_torch_threads(settings: Settings) -> int:
    """The torch threads ``tandem serve`` gives its encoder: configured, else its own default rule."""
    if settings.api.torch_threads:
        return settings.api.torch_threads
    try:
        from api.resources import serving_threads
    except ImportError:  # pragma: no cover - the service's module moved
        return max(1, (os.cpu_count() or 2) - 1)
    return int(serving_threads(None))


def measure_encoder(
    settings: Settings,
    paths: Sequence[Path],
    *,
    seconds: float,
    batch_sizes: Sequence[int] = (32, 1),
    thread_counts: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Images/s of the image encoder alone on the decoded ``paths``: per torch thread count and batch size.

    ``thread_counts`` defaults to every core (the machine's capacity: ``images_per_s``, batch
    ``batch_sizes[0]``) and the service's own count (:func:`service_torch_threads`:
    ``service_threads_images_per_s``) when it differs. The first batch size gets ``seconds``,
    the others half. The encoder is built as the service builds it and freed afterwards.
    """
    import torch

    from api.components import build_image_encoder
    from retrieval.images import decode_image

    cores = os.cpu_count() or 1
    service = service_torch_threads(settings)
    counts = list(thread_counts) if thread_counts else sorted({cores, service}, reverse=True)
    t0 = time.perf_counter()
    images = [decode_image(Path(p).read_bytes(), settings.images, name=str(p)) for p in paths]
    decode_s = time.perf_counter() - t0
    if not images:
        raise LoadtestError("no photo to encode")
    encoder = build_image_encoder(settings)
    result: dict[str, Any] = {
        "model_id": encoder.model_id,
        "device": settings.encoders.device,
        "thread_counts": counts,
        "service_threads": service,
        "images": len(images),
        "decode_images_per_s": round(len(images) / decode_s, 1) if decode_s > 0 else None,
        "reference_batch": batch_sizes[0],
        "batches": [],
    }
    original_threads = torch.get_num_threads()
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            for i, bs in enumerate(batch_sizes):
                result["batches"].append(
                    _time_encoder(encoder, images, bs, seconds if i == 0 else seconds / 2, progress)
                )
                result["batches"][-1]["threads"] = threads
    finally:
        torch.set_num_threads(original_threads)
        del encoder
        gc.collect()

    def rate(threads: int) -> float | None:
        return next(
            (
                b["images_per_s"]
                for b in result["batches"]
                if b["threads"] == threads and b["batch_size"] == batch_sizes[0]
            ),
            None,
        )

    result["images_per_s"] = rate(counts[0])
    result["service_threads_images_per_s"] = rate(service)
    return result


def _time_encoder(
    encoder: Any, images: Sequence[Any], bs: int, budget: float, progress: Progress | None
) -> dict[str, Any]:
    """Encode ``images`` in batches of ``bs`` for ``budget`` seconds (after two untimed batches)."""
    import numpy as np
    import torch

    threads = torch.get_num_threads()
    task = progress.add_task(f"raw encoder, {threads} thread(s), batch {bs}", total=budget) if progress else None
    batches = [images[j : j + bs] for j in range(0, len(images) - bs + 1, bs)] or [list(images[:bs])]
    for b in batches[:2]:  # warm-up
        encoder.encode(b)
    times: list[float] = []
    done = 0
    busy_before, self_before = _busy_cpu_seconds(), _own_cpu_seconds(resource.RUSAGE_SELF)
    start = time.perf_counter()
    while True:
        b = batches[len(times) % len(batches)]
        t = time.perf_counter()
        encoder.encode(b)
        times.append(time.perf_counter() - t)
        done += len(b)
        elapsed = time.perf_counter() - start
        if progress is not None and task is not None:
            progress.update(task, completed=min(elapsed, budget))
        if elapsed >= budget:
            break
    used = _own_cpu_seconds(resource.RUSAGE_SELF) - self_before
    busy = _busy_cpu_seconds() - busy_before
    ms = np.asarray(times) * 1e3
    return {
        "batch_size": bs,
        "images_per_s": round(done / elapsed, 1),
        "mean_ms": round(float(ms.mean()), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "batches": len(times),
        "seconds": round(elapsed, 2),
        # CPU cores the encoder used, and what other processes took meanwhile.
        "cores_used": round(used / elapsed, 2),
        "other_cores": round(max(busy - used, 0.0) / elapsed, 2),
    }


def _warm_up(base_url: str, key: str, payloads: Sequence[Mapping[str, Any]], top_k: int) -> list[float]:
    """Send ``payloads`` one by one; the first must be a good answer. Latencies in ms."""
    import httpx

    times: list[float] = []
    with httpx.Client(timeout=30.0) as client:
        for i, payload in enumerate(payloads):
            t0 = time.perf_counter()
            resp = client.post(f"{base_url}{RECOMMEND_PATH}", json=dict(payload), headers={"X-API-Key": key})
            times.append((time.perf_counter() - t0) * 1e3)
            try:
                body: Any = resp.json()
            except ValueError:
                body = None
            problem = check_response(resp.status_code, body, top_k)
            if problem is not None and i == 0:
                raise LoadtestError(
                    f"the API's answer to a warm-up request {dict(payload)} is a failure ({problem}): {resp.text[:500]}"
                )
    return times


@dataclass
class _LocustRun:
    name: str
    users: int
    spawn_rate: float
    think_s: tuple[float, float]
    duration_s: int

    @property
    def ramp_s(self) -> int:
        """Seconds to start every user; statistics are reset after it, so the run lasts that much longer."""
        return math.ceil(self.users / self.spawn_rate) if self.users > 1 else 0


def _run_locust(
    spec: _LocustRun,
    *,
    host: str,
    work: Path,
    env: Mapping[str, str],
    services: Sequence[_Service],
    progress: Progress | None,
) -> dict[str, Any]:
    """One headless Locust run as a subprocess: its statistics, failures, history and the CPU each process used."""
    prefix = work / spec.name
    summary = work / f"{spec.name}_summary.json"
    run_env = {
        **env,
        ENV_WAIT: f"{spec.think_s[0]:g}-{spec.think_s[1]:g}",
        ENV_SUMMARY: str(summary),
    }
    argv = [
        _venv_script("locust"),
        "-f",
        str(Path(__file__).with_name("locustfile.py")),
        "--headless",
        "-u",
        str(spec.users),
        "-r",
        f"{spec.spawn_rate:g}",
        "-t",
        f"{spec.duration_s + spec.ramp_s}s",
        "--reset-stats",
        "--host",
        host,
        "--csv",
        str(prefix),
        "--only-summary",
        "--stop-timeout",
        "5",
    ]
    cpu_before = {s.name: s.cpu_seconds() for s in services}
    api = next((s for s in services if s.name == "api"), None)
    threads_before = api.thread_cpu_seconds() if api is not None else {}
    children_before = _own_cpu_seconds(resource.RUSAGE_CHILDREN)
    self_before = _own_cpu_seconds(resource.RUSAGE_SELF)
    busy_before = _busy_cpu_seconds()
    total_s = spec.duration_s + spec.ramp_s
    task = progress.add_task(f"locust: {run_title(spec.name, spec.users)}", total=total_s) if progress else None
    log = work / f"{spec.name}.log"
    proc = _Service(f"locust ({spec.name})", argv, log, run_env)
    t0 = time.perf_counter()
    try:
        while proc.alive():
            elapsed = time.perf_counter() - t0
            if progress is not None and task is not None:
                progress.update(task, completed=min(elapsed, total_s))
            if elapsed > total_s + 90:
                proc.proc.send_signal(signal.SIGTERM)  # Locust writes its statistics on SIGTERM
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.proc.wait(timeout=15)
                break
            time.sleep(0.25)
    finally:
        proc.stop(grace_s=5)
    wall = time.perf_counter() - t0
    if progress is not None and task is not None:
        progress.update(task, completed=total_s)
    # Locust is the only child reaped during the run, so the children's CPU time grew by Locust's alone.
    used = {s.name: s.cpu_seconds() - cpu_before[s.name] for s in services}
    used["locust"] = _own_cpu_seconds(resource.RUSAGE_CHILDREN) - children_before
    used["driver"] = _own_cpu_seconds(resource.RUSAGE_SELF) - self_before
    busy = _busy_cpu_seconds() - busy_before
    cpu = {name: round(seconds / wall, 2) for name, seconds in used.items()}
    # Whatever else ran on the machine meanwhile (another job skews every figure).
    cpu["other"] = round(max(busy - sum(used.values()), 0.0) / wall, 2)
    cpu["machine_busy"] = round(busy / wall, 2)
    # The API's busiest threads: one near 1.0 is a serial bottleneck; several summing to ~1 hint at the GIL.
    threads_after = api.thread_cpu_seconds() if api is not None else {}
    thread_cores = [
        (round((sec - threads_before.get(tid, (name, 0.0))[1]) / wall, 2), f"{name} ({tid})")
        for tid, (name, sec) in threads_after.items()
    ]
    api_threads = [{"thread": t, "cores": c} for c, t in sorted(thread_cores, reverse=True)[:_TOP_THREADS]]

    stats_csv = Path(f"{prefix}_stats.csv")
    if summary.is_file():
        stats = json.loads(summary.read_text(encoding="utf-8"))
        source = "Locust's final statistics (written by the locustfile on quit)"
    elif stats_csv.is_file():
        stats = parse_stats_csv(stats_csv)
        failures = Path(f"{prefix}_failures.csv")
        stats["errors"] = parse_failures_csv(failures) if failures.is_file() else []
        source = f"{stats_csv.name} (Aggregated row)"
    else:
        raise LoadtestError(f"Locust wrote no statistics (exit code {proc.proc.returncode}); its output:\n{_tail(log)}")
    errors = stats.pop("errors", [])
    history_csv = Path(f"{prefix}_stats_history.csv")
    return {
        "name": spec.name,
        "title": run_title(spec.name, spec.users),
        "users": spec.users,
        "spawn_rate": spec.spawn_rate,
        "think_s": list(spec.think_s),
        "duration_s": spec.duration_s,
        "ramp_s": spec.ramp_s,
        "wall_s": round(wall, 1),
        "exit_code": proc.proc.returncode,
        "stats": stats,
        "stats_source": source,
        "errors": errors,
        "history": parse_history_csv(history_csv) if history_csv.is_file() else [],
        "cpu": cpu,
        "api_threads": api_threads,
    }


# --------------------------------------------------------------------------- #
# Entry points
# --------------------------------------------------------------------------- #


@dataclass
class LoadtestConfig:
    """What one load test does; :meth:`quick` is the few-seconds variant for tests."""

    ids: int = 500
    single_s: int = 30
    users: int = 50
    duration_s: int = 60
    spawn_rate: float = 10.0
    think_s: tuple[float, float] = REFERENCE_THINK_S
    raw_s: float = 10.0
    top_k: int = 10
    seed: int = 0
    index_limit: int | None = None
    startup_timeout_s: float = 180.0
    warmup: int = _WARMUP_REQUESTS
    # Before each measurement, wait up to this long for other processes to leave the CPU (0: do not).
    quiet_wait_s: float = 120.0
    quick: bool = False
    # Build the index first when it is missing (tandem demo); off for a stand-in service.
    prepare_index: bool = True
    # The service's command line, ``{port}`` standing for its port; None = ``tandem serve`` (tests use a stand-in).
    api_argv: tuple[str, ...] | None = None

    @classmethod
    def quick_config(cls, **overrides: Any) -> LoadtestConfig:
        base: dict[str, Any] = {
            "ids": 100,
            "single_s": 5,
            "duration_s": 6,
            "raw_s": 2.0,
            "warmup": 3,
            "quiet_wait_s": 0.0,
            "quick": True,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def _quiet(cfg: LoadtestConfig, progress: Progress | None, own: Sequence[_Service]) -> dict[str, float] | None:
    """:func:`wait_for_quiet` with a progress row; ``None`` when the config does not wait."""
    if cfg.quiet_wait_s <= 0:
        return None
    task = progress.add_task("waiting for other processes to leave the CPU", total=None) if progress else None
    result = wait_for_quiet(cfg.quiet_wait_s, own=own)
    if progress is not None and task is not None:
        progress.update(
            task,
            total=1,
            completed=1,
            description=f"CPU: other processes {result['other_cores']:.2f} cores (waited {result['waited_s']:.0f} s)",
        )
    return result


@contextlib.contextmanager
def _progress(console: Console | None) -> Iterator[Progress | None]:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if console is None:
        yield None
        return
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as p:
        yield p


def run(
    settings: Settings,
    config: LoadtestConfig | None = None,
    *,
    reports_dir: Path = Path("eval/reports"),
    name: str = "api_loadtest",
    console: Console | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole load test (module docstring); returns the results with ``report`` (the paths written).

    ``notes`` are lines added to the report's notes.
    """
    from eval.bench_retrieval import machine_info

    cfg = config or LoadtestConfig()
    echo: Callable[[str], None] = console.print if console is not None else (lambda _msg: None)
    notes = list(notes)
    built = ensure_index(settings, cfg.index_limit, echo) if cfg.prepare_index else None
    if built:
        notes.append(f"The index was missing: `{built}` built it before the test.")
    images_dir = settings.catalogue.path / "images"
    ids = pick_ids(images_dir, cfg.ids, cfg.seed)
    work = Path(tempfile.mkdtemp(prefix="tandem-loadtest-"))
    ids_file = work / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
    key = secrets.token_urlsafe(24)
    services: list[_Service] = []
    runs: dict[str, Any] = {}
    quiet: dict[str, dict[str, float] | None] = {}
    ok = False
    try:
        with _progress(console) as progress:
            quiet["raw_encoder"] = _quiet(cfg, progress, services)
            raw = measure_encoder(
                settings, [images_dir / f"{i}.jpg" for i in ids], seconds=cfg.raw_s, progress=progress
            )
            machine = machine_info()

            img_port = free_port()
            image_server = _Service(
                "image_server",
                [sys.executable, "-c", _IMAGE_SERVER_CODE, str(images_dir), str(img_port)],
                work / "image_server.log",
            )
            services.append(image_server)
            image_base = f"http://127.0.0.1:{img_port}"
            _wait_http(f"{image_base}/{quote(ids[0])}.jpg", image_server, 30)

            api_port = free_port()
            base_url = f"http://127.0.0.1:{api_port}"
            api_env = {**os.environ, "TANDEM_API__KEYS": key, "TANDEM_STORAGE__URL_ALLOW": "127.0.0.1"}
            starting = (
                progress.add_task("starting the API (tandem serve), waiting for /readyz", total=None)
                if progress
                else None
            )
            api = _Service(
                "api",
                [a.replace("{port}", str(api_port)) for a in cfg.api_argv]
                if cfg.api_argv
                else [_venv_script("tandem"), "serve", "--host", "127.0.0.1", "--port", str(api_port)],
                work / "api.log",
                api_env,
            )
            services.append(api)
            ready_s = _wait_http(f"{base_url}/readyz", api, cfg.startup_timeout_s, {"X-API-Key": key})
            if progress is not None and starting is not None:
                progress.update(starting, total=1, completed=1, description=f"API ready in {ready_s:.1f} s")
            import httpx

            readyz: Any = httpx.get(f"{base_url}/readyz", headers={"X-API-Key": key}, timeout=10).json()

            rng = random.Random(cfg.seed)
            warm = _warm_up(
                base_url,
                key,
                [build_payload(image_base, rng.choice(ids), cfg.top_k) for _ in range(cfg.warmup)],
                cfg.top_k,
            )

            locust_env = {
                **os.environ,
                ENV_IMAGE_BASE: image_base,
                ENV_IDS_FILE: str(ids_file),
                ENV_KEY: key,
                ENV_TOP_K: str(cfg.top_k),
            }
            specs = [
                _LocustRun("single", 1, 1, (0.0, 0.0), cfg.single_s),
                _LocustRun("think", cfg.users, cfg.spawn_rate, cfg.think_s, cfg.duration_s),
                _LocustRun("saturation", cfg.users, cfg.spawn_rate, (0.0, 0.0), cfg.duration_s),
            ]
            before = _scrape(base_url, key)
            for spec in specs:
                quiet[spec.name] = _quiet(cfg, progress, services)
                result = _run_locust(
                    spec, host=base_url, work=work, env=locust_env, services=services, progress=progress
                )
                after = _scrape(base_url, key)
                result["metrics"] = metrics_delta(before, after) if after is not None else None
                runs[spec.name] = result
                before = after
                if not api.alive():
                    raise LoadtestError(f"the API died during the {spec.name} run; its output:\n{_tail(api.log)}")
        end = _scrape(base_url, key)
        ok = True
    finally:
        for service in reversed(services):
            service.stop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            echo(f"logs kept in {work}")

    targets = evaluate_targets(runs, raw.get("images_per_s"))
    sat = _stat(runs, "saturation", "rps")
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "reference": REFERENCE,
        "config": {
            "quick": cfg.quick,
            "ids": len(ids),
            "seed": cfg.seed,
            "top_k": cfg.top_k,
            "think_s": list(cfg.think_s),
            "images_dir": str(images_dir.resolve()),
            "index": settings.qdrant.url or str(settings.qdrant_dir.resolve()),
            "image_encoder": raw.get("model_id"),
            "device": settings.encoders.device,
            "mode": settings.retrieval.mode,
            "api": {
                k: getattr(settings.api, k)
                for k in ("batch_max_size", "batch_wait_ms", "max_in_flight", "deadline_s", "torch_threads")
            },
            "api_ready_s": round(ready_s, 1),
            "readyz": readyz,
            "warmup_ms": [round(t, 1) for t in warm],
            "spawn_rate": cfg.spawn_rate,
            "quiet_wait_s": cfg.quiet_wait_s,
        },
        "quiet": quiet,
        "raw_encoder": raw,
        "runs": runs,
        "api_to_raw_ratio": round(sat / raw["images_per_s"], 3)
        if sat is not None and raw.get("images_per_s")
        else None,
        "api_to_raw_ratio_service_threads": round(sat / raw["service_threads_images_per_s"], 3)
        if sat is not None and raw.get("service_threads_images_per_s")
        else None,
        "metrics_total": metrics_delta(None, end) if end is not None else None,
        "targets": targets,
        "notes": notes,
    }
    paths = write_report(results, reports_dir, name)
    results["report"] = {k: str(v) for k, v in paths.items()}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval.loadtest``: the load test with a rich progress display; exit code 1 on a failure to run."""
    from rich.console import Console

    from api.settings import get_settings

    parser = argparse.ArgumentParser(
        prog="python -m eval.loadtest",
        description="Locust load test of the recommendation API (tandem serve) beside the raw image encoder.",
    )
    parser.add_argument("--quick", action="store_true", help="runs of a few seconds (a smoke test)")
    parser.add_argument("--ids", type=int, default=None, help="catalogue photos to query (default 500; quick 100)")
    parser.add_argument(
        "--reports",
        type=Path,
        default=None,
        help="report folder (default eval/reports; with --quick TANDEM_HOME/reports, so real results stay)",
    )
    parser.add_argument("--name", default="api_loadtest", help="report file names (default api_loadtest)")
    parser.add_argument("--single-s", type=int, default=None, help="single-user run, seconds (default 30)")
    parser.add_argument("--users", type=int, default=None, help="concurrent users of the two load runs (default 50)")
    parser.add_argument("--duration-s", type=int, default=None, help="each load run, seconds (default 60)")
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default 10)")
    parser.add_argument("--think", default="0.5-1.5", help="think time of the reference run: S or MIN-MAX seconds")
    parser.add_argument("--raw-s", type=float, default=None, help="raw encoder measurement, seconds (default 10)")
    parser.add_argument("--top-k", type=int, default=None, help="products per request (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the photo sample (default 0)")
    parser.add_argument("--index-limit", type=int, default=None, help="index only N products if there is no index")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=None,
        help="before each measurement wait up to S s for other processes to leave the CPU (default 120; quick 0)",
    )
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {
        "ids": args.ids,
        "single_s": args.single_s,
        "users": args.users,
        "duration_s": args.duration_s,
        "spawn_rate": args.spawn_rate,
        "think_s": parse_wait(args.think),
        "raw_s": args.raw_s,
        "top_k": args.top_k,
        "seed": args.seed,
        "index_limit": args.index_limit,
        "quiet_wait_s": args.quiet_wait_s,
    }
    if args.quick:
        config = LoadtestConfig.quick_config(**overrides)
    else:
        config = LoadtestConfig(**{k: v for k, v in overrides.items() if v is not None})
    for label, value in (("--ids", config.ids), ("--users", config.users), ("--single-s", config.single_s)):
        if value <= 0:
            parser.error(f"{label} must be positive")
    if config.duration_s <= 0 or config.top_k <= 0 or config.raw_s <= 0 or config.spawn_rate <= 0:
        parser.error("--duration-s, --top-k, --raw-s and --spawn-rate must be positive")

    settings = get_settings()
    reports = args.reports or (settings.home / "reports" if args.quick else Path("eval/reports"))
    console = Console(stderr=True)
    try:
        results = run(settings, config, reports_dir=reports, name=args.name, console=console, notes=args.note)
    except LoadtestError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("interrupted: every process the load test started is stopped")
        return 130
    for t in results["targets"]:
        mark = {True: "[green]PASS[/green]", False: "[red]MISS[/red]"}.get(t["passed"], "n/a ")
        console.print(f"{mark}  {t['target']} ({_title(results['runs'], t['run'])}): {_measured(t)}", highlight=False)
    console.print(f"wrote {', '.join(results['report'].values())}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
