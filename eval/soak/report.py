"""The soak's figures, targets, plot and report (``soak.{json,md,png}``).

- **Memory**: the service's resident memory (the API and its LLM worker) after warm-up (the
  mean over the second minute) against the last minute's mean; ``rss_growth`` is the fraction
  over the warm-up figure. Target: within 10 %.
- **Errors**: an answer other than the one its request expects (a 5xx, a timeout, a bad
  request that was not refused with its own 4xx) is *unexpected*. Target: none.
- **Drift**: per minute p50/p95/p99 of the recommendations (the REST path) and of chat turns;
  the last five minutes' p95 against the first five after warm-up. Target: at most 1.25×.

Example:
    >>> summary = summarise(results)  # doctest: +SKIP
    >>> summary["rss_growth"], summary["unexpected"]  # doctest: +SKIP
    (0.021, 0)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.bench_llm.measure import percentile
from eval.report_format import fmt, machine_line, table, verdict

__all__ = ["DRIFT_LIMIT", "RSS_LIMIT", "per_minute", "summarise", "write_report"]

RSS_LIMIT = 0.10
DRIFT_LIMIT = 1.25
_REST = ("photo", "text")
_CHAT = ("chat", "chat_stream")
_SERVICE = ("api", "llm worker")


def per_minute(records: Sequence[Mapping[str, Any]], kinds: Sequence[str]) -> list[dict[str, Any]]:
    """p50/p95/p99 and counts per whole minute of the requests of ``kinds`` (latency of expected answers)."""
    rows: dict[int, list[float]] = {}
    unexpected: Counter[int] = Counter()
    for r in records:
        if r["kind"] not in kinds:
            continue
        minute = int(r["t_s"] // 60)
        rows.setdefault(minute, [])
        if r["expected"] and r["latency_ms"] is not None:
            rows[minute].append(r["latency_ms"])
        else:
            unexpected[minute] += 1
    return [{"minute": m + 1, "requests": len(v) + unexpected[m], "p50_ms": percentile(v, 50),
             "p95_ms": percentile(v, 95), "p99_ms": percentile(v, 99), "unexpected": unexpected[m]}
            for m, v in sorted(rows.items())]  # fmt: skip


def _service_rss(sample: Mapping[str, Any]) -> float:
    return float(sum(v for k, v in sample["rss_mb"].items() if k in _SERVICE))


def _mean_rss(samples: Sequence[Mapping[str, Any]], start_s: float, end_s: float) -> float | None:
    values = [_service_rss(s) for s in samples if start_s <= s["t_s"] < end_s]
    return sum(values) / len(values) if values else None


def _drift(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Last five minutes' median p95 over the first five after warm-up (minute 1 is warm-up)."""
    p95 = [r["p95_ms"] for r in rows if r["minute"] > 1 and r["p95_ms"] is not None]
    if len(p95) < 2:
        return None
    n = min(5, len(p95) // 2)
    first, last = sorted(p95[:n])[n // 2], sorted(p95[-n:])[n // 2]
    return round(last / first, 3) if first else None


def summarise(results: Mapping[str, Any]) -> dict[str, Any]:
    """The figures ``reliability.json`` keeps, and the rest of the report's."""
    records, samples = results["records"], results["samples"]
    minutes = float(results["config"]["minutes"])
    warm = _mean_rss(samples, 60.0, 120.0) or _mean_rss(samples, 0.0, 60.0)
    last = _mean_rss(samples, max(0.0, minutes * 60 - 60), minutes * 60 + 60)
    everything = per_minute(records, ("photo", "text", "chat", "chat_stream", "bad"))
    bad = Counter(f"{r['kind']} {r['label']}".strip() + f" → {r['status'] or r['error']}" for r in records
                  if not r["expected"])  # fmt: skip
    fds = [sum(s["fds"].values()) for s in samples]
    return {
        "minutes": minutes,
        "requests": len(records),
        "capacity_rps": results["capacity_rps"],
        "capacity_by_group": results.get("capacity_by_group", {}),
        "rate_rps": results["rate_rps"],
        "rss_after_warmup_mb": round(warm, 1) if warm else None,
        "rss_last_minute_mb": round(last, 1) if last else None,
        "rss_growth": round((last - warm) / warm, 4) if warm and last else None,
        "fds_first": fds[0] if fds else None,
        "fds_last": fds[-1] if fds else None,
        "errors": sum(bad.values()),
        "unexpected": sum(bad.values()),
        "unexpected_by_kind": dict(bad.most_common()),
        "p99_ms_first_minute": _round(everything[0]["p99_ms"]) if everything else None,
        "p99_ms_last_minute": _round(everything[-1]["p99_ms"]) if everything else None,
        "drift_rest_p95": _drift(per_minute(records, _REST)),
        "drift_chat_p95": _drift(per_minute(records, _CHAT)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _targets(s: Mapping[str, Any]) -> list[list[str]]:
    growth, rest, chat = s["rss_growth"], s["drift_rest_p95"], s["drift_chat_p95"]
    return [
        ["memory at the end within 10 % of after warm-up", f"{fmt(growth * 100 if growth is not None else None)} %",
         verdict(None if growth is None else growth <= RSS_LIMIT)],
        ["no unexpected errors", str(s["unexpected"]), verdict(s["unexpected"] == 0)],
        ["no latency drift: REST p95, last 5 min / first 5 min ≤ 1.25", fmt(rest, 2),
         verdict(None if rest is None else rest <= DRIFT_LIMIT)],
        ["no latency drift: chat p95, last 5 min / first 5 min ≤ 1.25", fmt(chat, 2),
         verdict(None if chat is None else chat <= DRIFT_LIMIT)],
    ]  # fmt: skip


def _minute_rows(rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    return [[r["minute"], r["requests"], fmt(r["p50_ms"], 0), fmt(r["p95_ms"], 0), fmt(r["p99_ms"], 0),
             r["unexpected"]] for r in rows]  # fmt: skip


def _capacity_note(summary: Mapping[str, Any]) -> str:
    groups = summary.get("capacity_by_group") or {}
    if not groups:
        return ", measured with the same mix just before"
    parts = ", ".join(f"{name} {fmt(value, 2)}/s" for name, value in groups.items())
    return (f", combined from each kind's own closed-loop capacity measured just before ({parts}; the mix's is"
            " 1 / Σ share / capacity, so no kind runs above the stated share of what it can take)")  # fmt: skip


def markdown(results: Mapping[str, Any], summary: Mapping[str, Any], machine: Mapping[str, Any]) -> str:
    s = summary
    head = ["minute", "requests", "p50 ms", "p95 ms", "p99 ms", "unexpected"]
    lines = [
        "# Soak: mixed traffic at half the measured capacity",
        "",
        machine_line(machine),
        "",
        f"`tandem serve` (Qdrant Edge, the domain image tower, the embedded LLM worker on SmolLM2-135M + the LoRA"
        f" ranker) for **{fmt(s['minutes'], 0)} minutes** of open-loop Poisson arrivals at {fmt(s['rate_rps'], 2)}"
        f" requests/s: {fmt(results['config']['load'] * 100, 0)} % of the mix's capacity of"
        f" {fmt(s['capacity_rps'], 2)} requests/s{_capacity_note(s)}. {s['requests']} requests: recommendations by"
        " photo URL and by"
        " words, chat turns, streamed chat turns, and bad requests that must be refused with their own 4xx"
        " (`eval/soak/traffic.py`).",
        "",
        "| target | measured | result |",
        "| --- | ---: | ---: |",
        *[f"| {a} | {b} | {c} |" for a, b, c in _targets(s)],
        "",
        f"Resident memory of the API and its LLM worker: {fmt(s['rss_after_warmup_mb'])} MB after warm-up (mean"
        f" of minute 2), {fmt(s['rss_last_minute_mb'])} MB over the last minute. Open file descriptors of every"
        f" process: {s['fds_first']} at the start, {s['fds_last']} at the end. Unexpected answers:"
        f" {json.dumps(s['unexpected_by_kind']) if s['unexpected_by_kind'] else 'none'}.",
        "",
        "![soak](soak.png)",
        "",
        "## Recommendations (REST) per minute",
        "",
        *table(head, _minute_rows(per_minute(results["records"], _REST))),
        "## Chat turns per minute",
        "",
        *table(head, _minute_rows(per_minute(results["records"], _CHAT))),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _plot(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn

    samples = results["samples"]
    fig, (mem, fds, lat) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    names = sorted({k for s in samples for k in s["rss_mb"]})
    t = [s["t_s"] / 60 for s in samples]
    for name in names:
        mem.plot(t, [s["rss_mb"].get(name) for s in samples], label=name)
        fds.plot(t, [s["fds"].get(name) for s in samples], label=name)
    mem.set_ylabel("resident memory (MB)")
    fds.set_ylabel("open file descriptors")
    mem.legend(fontsize=8)
    for kinds, label in ((_REST, "REST p95"), (_CHAT, "chat p95")):
        rows = per_minute(results["records"], kinds)
        lat.plot([r["minute"] - 0.5 for r in rows], [r["p95_ms"] for r in rows], marker="o", label=label)
    lat.set_yscale("log")
    lat.set_ylabel("latency per minute (ms)")
    lat.set_xlabel("minutes")
    lat.legend(fontsize=8)
    fig.suptitle("Soak: memory, descriptors and p95 latency over time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: Mapping[str, Any], reports: Path, machine: Mapping[str, Any]) -> dict[str, Any]:
    """``soak.json`` (the summary, per-minute rows and memory samples; not every request), ``soak.md``, ``soak.png``."""
    reports.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    body = {"summary": summary, "machine": dict(machine), "config": results["config"],
            "per_minute": {"rest": per_minute(results["records"], _REST),
                           "chat": per_minute(results["records"], _CHAT)},
            "samples": results["samples"]}  # fmt: skip
    (reports / "soak.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    (reports / "soak.md").write_text(markdown(results, summary, machine), encoding="utf-8")
    _plot(results, reports / "soak.png")
    return summary
