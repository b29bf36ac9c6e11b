"""Chat latency: time to the first product card and to the first explanation token, p50/p95, on this machine.

``tandem bench chat [--turns N] [--reports DIR]`` (``make bench-chat``) serves the whole
product as ``make run`` does — the API (Qdrant Edge, the domain image tower) in a uvicorn
thread and Tandem's embedded LLM worker (the base model, SmolLM2-135M-Instruct by default,
and the LoRA ranker) as a child process — waits until ``/readyz`` reports the LLM part up,
and sends streamed ``POST /v1/chat`` turns one after
another: the requests of SYNTHETIC test buyers (words; a photo for those who sent one),
a follow-up in the same session for every third turn. Per turn it records the time from
sending to the ``ranking`` event (the first product card a buyer sees), to the first
``token`` event, and to ``done``; the report gives p50/p95 and a plot.

Example:
    >>> report = run_benchmark("http://127.0.0.1:8000", catalogue, buyers, models, turns=20)  # doctest: +SKIP
    >>> report["first_card_ms"]["p50"]  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from eval.machine import machine_info
from eval.process import wait_llm_ready
from eval.report_format import verdict
from finetune.buyers import Buyer
from retrieval.catalogue import Catalogue

__all__ = ["run_benchmark", "summarise", "write_chat_report"]


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "mean": 0.0, "n": 0}
    arr = np.asarray(values)
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1),
            "mean": round(float(arr.mean()), 1), "n": len(values)}  # fmt: skip


def _turn(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    marks: dict[str, float] = {}
    done: dict[str, Any] = {}
    revised = 0
    with client.stream("POST", "/v1/chat", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"/v1/chat answered {response.status_code}: {response.read()[:200]!r}")
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
                now = (time.perf_counter() - t0) * 1000
                if event == "ranking":
                    marks.setdefault("first_card_ms", now)
                elif event == "token":
                    marks.setdefault("first_token_ms", now)
                elif event == "revise":
                    revised += 1
            elif line.startswith("data: ") and event == "done":
                done = json.loads(line[6:])
                marks["done_ms"] = (time.perf_counter() - t0) * 1000
    return {**marks, "revised": revised, "session_id": done.get("session_id"),
            "degraded": [d["part"] for d in done.get("degraded", [])],
            "items": len(done.get("items", []))}  # fmt: skip


def _buyer_turn(
    client: httpx.Client, catalogue: Catalogue, buyer: Buyer, i: int, session: str | None
) -> tuple[dict[str, Any], str | None]:
    """One SYNTHETIC buyer's turn (every third a follow-up in the same session): its timings and session id."""
    message: dict[str, Any] = {"text": buyer.query_text}
    follow_up = i % 3 == 2 and session is not None
    if follow_up:
        message = {"text": "in black, not this brand"}
    elif buyer.query_image and (p := catalogue.get(buyer.query_image)) and p.image_path:
        message["image_base64"] = base64.b64encode(p.image_path.read_bytes()).decode()
    body: dict[str, Any] = {"message": message, "top_k": 10, "stream": True,
                            "buyer": {"profile": buyer.profile.describe(), "history": list(buyer.history)}}  # fmt: skip
    if follow_up:
        body["session_id"] = session
    row = _turn(client, body)
    row.update(kind="follow-up" if follow_up else ("photo+text" if "image_base64" in message else "text"))
    return row, row["session_id"]


def run_benchmark(
    base_url: str,
    catalogue: Catalogue,
    buyers: Sequence[Buyer],
    models: Mapping[str, str],
    *,
    turns: int = 60,
    start: int = 0,
    reports: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Send ``turns`` streamed chat turns to the service at ``base_url``; write ``chat_latency.{json,md,png}``.

    The caller serves the product (``tandem bench chat`` does, as ``make run`` would); ``models``
    names the base model and the ranker it serves, for the report. The turns are those of
    ``buyers[start:]``; the first is sent but not counted.
    """
    report_progress = progress or (lambda done, total: None)
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=base_url, timeout=300) as client:
        wait_llm_ready(client, 900.0)
        session: str | None = None
        for i in range(turns):
            row, session = _buyer_turn(client, catalogue, buyers[(start + i) % len(buyers)], i, session)
            if i > 0:  # the first turn pays for lazy initialisation in both processes
                rows.append(row)
            report_progress(i + 1, turns)
    report = summarise(rows, models)
    if reports is not None:
        write_chat_report(report, reports)
    return report


def summarise(rows: Sequence[dict[str, Any]], models: Mapping[str, str]) -> dict[str, Any]:
    """The report of measured turns (one run's, or several runs' together): percentiles, shares, the machine."""
    return {
        "turns": len(rows),
        "first_card_ms": _percentiles([r["first_card_ms"] for r in rows if "first_card_ms" in r]),
        "first_token_ms": _percentiles([r["first_token_ms"] for r in rows if "first_token_ms" in r]),
        "done_ms": _percentiles([r["done_ms"] for r in rows if "done_ms" in r]),
        "degraded_share": {
            part: round(sum(part in r["degraded"] for r in rows) / max(1, len(rows)), 3)
            for part in ("ranker", "explainer", "cold_start")
        },
        "revised_share": round(sum(r.get("revised", 0) > 0 for r in rows) / max(1, len(rows)), 3),
        "by_kind": {
            kind: _percentiles([r["first_card_ms"] for r in rows if r["kind"] == kind])
            for kind in ("text", "photo+text", "follow-up")
        },
        "machine": machine_info(),
        "models": dict(models),
        "synthetic_buyers": True,
        "rows": list(rows),
    }


_METRICS = (("first_card_ms", "first card"), ("first_token_ms", "first token"), ("done_ms", "turn done"))


def _baseline_lines(report: dict[str, Any]) -> list[str]:
    """The same turns under other settings (``report["baselines"]``), measured first by the same command, as ratios."""
    bases = report.get("baselines") or []
    if not bases:
        return []
    head = "| " + " | ".join(f"{label} p50 | p95" for _, label in _METRICS) + " |"
    rule = "| --- |" + " ---: | ---: |" * len(_METRICS)
    lines = [f"The same {report['turns']} turns under other settings, run first by the same command on this machine:",
             "", "| configuration " + head, rule]  # fmt: skip
    for row in [*bases, {"name": "as configured (this report)", "settings": "", **report}]:
        cells = " | ".join(f"{row[key]['p50']} | {row[key]['p95']}" for key, _ in _METRICS)
        settings = f" (`{row['settings']}`)" if row["settings"] else ""
        lines.append(f"| {row['name']}{settings} | {cells} |")
    lines += ["", "As configured ÷ each of them (below 1: faster now):", "", "| ÷ " + head, rule]
    for row in bases:
        cells = " | ".join(f"{report[key]['p50'] / row[key]['p50']:.2f} | {report[key]['p95'] / row[key]['p95']:.2f}"
                           for key, _ in _METRICS)  # fmt: skip
        lines.append(f"| {row['name']} | {cells} |")
    return [*lines, ""]


# The same benchmark on the from-scratch toy model this one replaced (eval/reports/chat_latency.json before it).
_TOY = {"first_card": "1006 / 1188 ms", "first_token": "1065 / 1238 ms"}


def write_chat_report(report: dict[str, Any], reports: Path) -> None:
    """``chat_latency.{json,md,png}`` in ``reports``; with ``report["baselines"]`` (other settings) side by side."""
    import matplotlib  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)

    reports.mkdir(parents=True, exist_ok=True)
    (reports / "chat_latency.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("first_card_ms", "first product card"), ("first_token_ms", "first explanation token"),
                       ("done_ms", "turn done")):  # fmt: skip
        values = np.sort([r[key] for r in rows if key in r])
        if len(values):
            ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=label)
    ax.set_xlabel("milliseconds from sending the message")
    ax.set_ylabel("share of turns")
    ax.set_title(f"Chat latency, streamed /v1/chat ({report['models']['base']}, CPU)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(reports / "chat_latency.png", dpi=120)
    plt.close(fig)
    m = report["machine"]
    card, token, done = report["first_card_ms"], report["first_token_ms"], report["done_ms"]
    lines = [
        "# Chat latency: first product card and first explanation token",
        "",
        "> Requests are those of **SYNTHETIC** test buyers (`finetune/buyers.py`); retrieval, the models and the"
        " HTTP path are real: the API as `make run` serves it, Tandem's embedded worker (the base model"
        f" {report['models']['base']} and the LoRA ranker) in its own process, one turn at a time, streamed: the"
        " explanation one sentence per explained product, each shown word by word as far as its check passes.",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('logical_cores', '?')} cores, {m.get('ram_gb', '?')} GB RAM,"
        f" GPU: {m.get('gpu') or 'none'}. Turns measured: {report['turns']} (the first of each"
        f" run, warm-up, not counted; {report.get('rounds', 1)} round(s), the configurations alternating).",
        "",
        "| time from sending | p50 ms | p95 ms | mean ms |",
        "| --- | ---: | ---: | ---: |",
        f"| first product card (`ranking` event) | {card['p50']} | {card['p95']} | {card['mean']} |",
        f"| first explanation token (`token` event) | {token['p50']} | {token['p95']} | {token['mean']} |",
        f"| turn done (`done` event) | {done['p50']} | {done['p95']} | {done['mean']} |",
        "",
        "First card by kind of turn: "
        + ", ".join(f"{k} p50 {v['p50']} ms (n={v['n']})" for k, v in report["by_kind"].items()),
        "",
        f"Share of turns that degraded (fell back): {report['degraded_share']}. Share of turns in which a sentence"
        f" shown as it was written failed its check at its end and was taken back (`revise` event):"
        f" {report.get('revised_share', 0.0)}.",
        "",
        "| target (2 cores) | p95 measured | result |",
        "| --- | ---: | ---: |",
        f"| first product card ≤ 2.5 s | {card['p95']} ms | {verdict(card['p95'] <= 2500, bold=False)} |",
        f"| first explanation token ≤ 3 s | {token['p95']} ms | {verdict(token['p95'] <= 3000, bold=False)} |",
        "",
        *_baseline_lines(report),
        "Before (the 4.2M-parameter model Tandem trained from scratch, the same benchmark, 39 turns): first card"
        f" p50 / p95 {_TOY['first_card']}, first token {_TOY['first_token']}.",
        "",
        "![latency](chat_latency.png)",
    ]
    (reports / "chat_latency.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
