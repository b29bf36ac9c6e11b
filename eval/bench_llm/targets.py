"""The benchmark's targets and the JSON shape it promises: headline figures per policy, PASS/MISS, shape check.

:func:`headline_policies` picks each policy's figures for the JSON's ``policies``;
:func:`evaluate_targets` marks every target (p99 against round-robin, fair shares, the
dispatcher's overhead, the kill drill's success rate); :func:`check_shape` refuses results
without the keys the project promises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eval.bench_llm.config import HEADLINE_KEYS, POLICIES

__all__ = [
    "KILL_SUCCESS_MIN",
    "MAX_SHARE_MAX",
    "OVERHEAD_MAX_MS",
    "P99_RATIO_MIN",
    "check_shape",
    "evaluate_targets",
    "headline_policies",
]

# Targets (the report marks each PASS or MISS).
P99_RATIO_MIN = 2.0  # round-robin p99 / policy p99 at 80 % load, heterogeneous workers
MAX_SHARE_MAX = 1.5  # busiest worker / fair share, equal workers
OVERHEAD_MAX_MS = 2.0  # dispatcher overhead per request (in process)
KILL_SUCCESS_MIN = 0.99  # success rate with one of three workers killed


def headline_policies(
    runs: Sequence[Mapping[str, Any]], equal_runs: Sequence[Mapping[str, Any]], load: float
) -> dict[str, dict[str, float | None]]:
    """The JSON's ``policies``: each policy's heterogeneous run at ``load``, and ``max_share`` from equal workers."""
    out: dict[str, dict[str, float | None]] = {}
    for policy in POLICIES:
        het = next((r for r in runs if r["policy"] == policy.value and r["load"] == load), None)
        eq = next((r for r in equal_runs if r["policy"] == policy.value), None)
        out[policy.value] = {
            "p50_ms": het["p50_ms"] if het else None,
            "p99_ms": het["p99_ms"] if het else None,
            "ttft_p50_ms": het["ttft_p50_ms"] if het else None,
            "throughput_rps": het["throughput_rps"] if het else None,
            "max_share": eq["max_share"] if eq else None,
        }
    return out


def evaluate_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every target with what was measured and ``passed`` (``None`` when it could not be measured)."""
    policies = results.get("policies") or {}
    load = results.get("config", {}).get("headline_load", 0.8)
    rr = (policies.get("round_robin") or {}).get("p99_ms")
    targets: list[dict[str, Any]] = []
    for name in ("least_outstanding", "power_of_two"):
        p99 = (policies.get(name) or {}).get("p99_ms")
        ratio = rr / p99 if rr is not None and p99 else None
        targets.append({
            "target": f"{name} p99 ≥ {P99_RATIO_MIN:g}× lower than round_robin at {load:.0%} load, "
                      "heterogeneous workers",
            "measured": f"{rr:,.0f} / {p99:,.0f} ms = {ratio:.2f}×" if ratio is not None else "n/a",
            "value": ratio,
            "passed": None if ratio is None else ratio >= P99_RATIO_MIN,
        })  # fmt: skip
    for policy in POLICIES:
        share = (policies.get(policy.value) or {}).get("max_share")
        targets.append({
            "target": f"{policy.value}: no worker above {MAX_SHARE_MAX:g}× its fair share, equal workers",
            "measured": f"{share:.2f}× fair share" if share is not None else "n/a",
            "value": share,
            "passed": None if share is None else share <= MAX_SHARE_MAX,
        })  # fmt: skip
    overhead = results.get("dispatcher_overhead_ms")
    targets.append({
        "target": f"dispatcher overhead < {OVERHEAD_MAX_MS:g} ms per request (in process)",
        "measured": f"{overhead:.3f} ms" if overhead is not None else "n/a",
        "value": overhead,
        "passed": None if overhead is None else overhead < OVERHEAD_MAX_MS,
    })  # fmt: skip
    success = results.get("kill_one_of_three_success_rate")
    targets.append({
        "target": f"≥ {KILL_SUCCESS_MIN:.0%} success with one of three workers killed",
        "measured": f"{success:.2%}" if success is not None else "n/a",
        "value": success,
        "passed": None if success is None else success >= KILL_SUCCESS_MIN,
    })  # fmt: skip
    return targets


def check_shape(results: Mapping[str, Any]) -> None:
    """Raise :class:`ValueError` unless ``results`` has the JSON shape the project promises."""
    policies = results.get("policies")
    if not isinstance(policies, Mapping) or set(policies) != {p.value for p in POLICIES}:
        raise ValueError(f"policies must hold exactly {[p.value for p in POLICIES]}")
    for name, figures in policies.items():
        if not isinstance(figures, Mapping) or not set(HEADLINE_KEYS) <= set(figures):
            raise ValueError(f"policies[{name!r}] must hold {HEADLINE_KEYS}")
    for key in ("dispatcher_overhead_ms", "kill_one_of_three_success_rate"):
        if key not in results:
            raise ValueError(f"missing {key!r}")
        if results[key] is not None and not isinstance(results[key], int | float):
            raise ValueError(f"{key!r} must be a number")
