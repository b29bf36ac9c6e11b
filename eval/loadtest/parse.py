"""What the load test reads back: Locust's CSV output and the service's Prometheus text (``GET /metrics``).

Parsers of Locust's ``_stats.csv``, ``_stats_history.csv`` and ``_failures.csv``, of one
``/metrics`` scrape (:class:`MetricsSnapshot`), and of what changed between two scrapes
(:func:`metrics_delta`, with the mean encoder batch size and the mean time per stage).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from eval.loadtest.client import clean_error, pct_key

__all__ = [
    "LabelSet",
    "MetricsSnapshot",
    "mean_batch_size",
    "metrics_delta",
    "parse_failures_csv",
    "parse_history_csv",
    "parse_prometheus",
    "parse_stats_csv",
    "stage_means_ms",
]


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
                stats[pct_key(column)] = _num(value) if requests else None
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
