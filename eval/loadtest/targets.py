"""The load test's yardsticks: the reference system's figures, the targets, and how a run is named.

:data:`REFERENCE` is what the reference paper reports (RTX 3090, 50 users);
:func:`evaluate_targets` marks every target of the runs passed or missed; :func:`run_title`
and :func:`title` name a run the same way in the report and on the console.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "MIN_RAW_RATIO",
    "REFERENCE",
    "REFERENCE_THINK_S",
    "evaluate_targets",
    "run_title",
    "stat",
    "title",
]

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


def title(runs: Mapping[str, Any], name: str) -> str:
    """A run's title as recorded, else :func:`run_title` of its name and users."""
    entry = runs.get(name) or {}
    return str(entry.get("title") or run_title(name, int(entry.get("users") or (1 if name == "single" else 50))))


# API throughput at saturation / the raw encoder's images/s, at least.
MIN_RAW_RATIO = 0.8


def stat(runs: Mapping[str, Any], run: str, key: str) -> float | None:
    """One figure of a run's statistics as a float, ``None`` when the run or the figure is missing."""
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

    add("mean latency ≤ 100 ms", "single", stat(runs, "single", "mean_ms"), lambda v: v <= 100, "ms")
    add("p95 latency ≤ 150 ms", "single", stat(runs, "single", "p95_ms"), lambda v: v <= 150, "ms")
    for run in ("think", "saturation"):
        add("throughput ≥ 40 req/s", run, stat(runs, run, "rps"), lambda v: v >= 40, "req/s")
        add("p95 latency ≤ 500 ms", run, stat(runs, run, "p95_ms"), lambda v: v <= 500, "ms")
        add("no failed request", run, stat(runs, run, "failures"), lambda v: v == 0, "failures")
    ratio = None
    sat = stat(runs, "saturation", "rps")
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
