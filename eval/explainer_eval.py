"""``tandem eval explainer``: does the explainer tell the truth, and in its own words?

Whole chat turns of SYNTHETIC test buyers run through the pipeline (:mod:`eval.turns`): the
LoRA ranker ranks, the base model writes one sentence per explained product, and
:class:`rag.explanation_check.ExplanationChecker` reads each sentence against the record of
the product it describes before it is shown. Measured per explanation and per sentence:

- **false claims before the check**: the model's sentences the check flags (a product
  outside the ranking, a colour, article type, gender, usage or brand the record contradicts);
- **false claims shown**: the shown sentences read again by the same check (a sentence that
  failed it was replaced by the record's, so this measures the replacement, not the check);
  the verbatim examples are there for a reader to find what the check's vocabularies miss;
- **the model's own words**: shown sentences that are the model's rather than the record's.

Example:
    >>> report = evaluate_explainer(pipeline, buyers, catalogue)  # doctest: +SKIP
    >>> report["explanations"]["model_words"]  # doctest: +SKIP
    0.86
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.report_format import machine_line, verdict
from eval.turns import buyer_turn
from finetune.buyers import Buyer
from rag.explanation_check import ExplanationChecker
from rag.pipeline import Pipeline
from rag.turn import TurnResult
from retrieval.catalogue import Catalogue

__all__ = ["evaluate_explainer", "write_explainer_report"]

_TITLE = re.compile(r"#(\d+) \([^)]*\)")  # "#2 (Title)" as shown -> "#2", so a title is not read as claims


def _shown_sentences(result: TurnResult) -> list[str]:
    text = _TITLE.sub(lambda m: f"#{m.group(1)}", result.explanation)
    return [s for s in re.split(r"(?<=\.)\s+(?=#\d)", text) if s.strip()]


def evaluate_explainer(
    pipeline: Pipeline,
    buyers: Sequence[Buyer],
    catalogue: Catalogue,
    *,
    examples: int = 20,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run one turn per buyer; rates per explanation and per sentence, and the first ``examples`` verbatim."""
    checker = ExplanationChecker(catalogue.products)
    report = progress or (lambda done, total: None)
    rows: list[dict[str, Any]] = []

    async def main() -> None:
        for i, buyer in enumerate(buyers):
            result = await pipeline.answer(buyer_turn(buyer, catalogue))
            ranked = [item.product for item in result.items[: pipeline.config.explained]]
            info = result.explainer
            raw = [s for s in info.get("raw", []) if s is not None]
            before = [s for s in raw if not checker.check(s, ranked).ok]
            shown = _shown_sentences(result)
            after = [s for s in shown if not checker.check(s, ranked).ok]
            rows.append({
                "buyer": buyer.buyer_id, "request": buyer.query_text, "photo": buyer.query_image is not None,
                "explanation": result.explanation, "raw": info.get("raw", []), "replaced": info.get("replaced", []),
                "sentences": info.get("sentences", 0), "model_sentences": info.get("model_sentences", 0),
                "false_before": len(before), "false_after": len(after),
                "first_token_ms": result.timing_ms.get("first_token"),
                "degraded": [f"{d.part}: {d.reason}" for d in result.degraded],
            })  # fmt: skip
            report(i + 1, len(buyers))

    asyncio.run(main())
    n = max(1, len(rows))
    sentences = max(1, sum(r["sentences"] for r in rows))
    written = max(1, sum(len([s for s in r["raw"] if s is not None]) for r in rows))
    return {
        "turns": len(rows),
        "synthetic_buyers": True,
        "explanations": {
            "false_claim_before_check": round(sum(r["false_before"] > 0 for r in rows) / n, 4),
            "false_claim_shown": round(sum(r["false_after"] > 0 for r in rows) / n, 4),
            "model_words": round(sum(r["model_sentences"] == r["sentences"] for r in rows) / n, 4),
        },
        "sentences": {
            "shown": sum(r["sentences"] for r in rows),
            "false_claim_before_check": round(sum(r["false_before"] for r in rows) / written, 4),
            "false_claim_shown": round(sum(r["false_after"] for r in rows) / sentences, 4),
            "model_words": round(sum(r["model_sentences"] for r in rows) / sentences, 4),
            "failed": sum(r["raw"].count(None) for r in rows),
        },
        "examples": rows[:examples],
    }


def _targets(results: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    shown, own = results["explanations"]["false_claim_shown"], results["explanations"]["model_words"]
    return [
        ("explanations shown with a false claim ≤ 2 %", f"{shown:.1%}", shown <= 0.02),
        ("explanations in the model's own words ≥ 80 %", f"{own:.1%}", own >= 0.8),
    ]


def write_explainer_report(results: Mapping[str, Any], report_dir: Path, model: Mapping[str, Any]) -> Path:
    """``explainer_eval.json`` and ``explainer_eval.md`` in ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "explainer_eval.json").write_text(json.dumps({**results, "model": dict(model)}, indent=2),
                                                    encoding="utf-8")  # fmt: skip
    e, s = results["explanations"], results["sentences"]
    lines = [
        "# Explainer evaluation (SYNTHETIC buyers)",
        "",
        "> The buyers and their requests are **synthetic** (`finetune/buyers.py`); the catalogue, retrieval, the"
        " ranker and the explainer are the product's own, run as a chat turn runs (`eval/turns.py`).",
        "",
        machine_line(),
        f"Explainer: {model.get('base', '?')}; ranker: {model.get('ranker', '?')}.",
        "",
        f"{results['turns']} turns; one sentence per explained product ({s['shown']} sentences shown).",
        "",
        "| measure | per explanation | per sentence |",
        "| --- | ---: | ---: |",
        f"| false claim in the model's words, before the check | {e['false_claim_before_check']:.1%} |"
        f" {s['false_claim_before_check']:.1%} |",
        f"| false claim shown, after the check | {e['false_claim_shown']:.1%} | {s['false_claim_shown']:.1%} |",
        f"| the model's own words (not the record's sentence) | {e['model_words']:.1%} | {s['model_words']:.1%} |",
        "",
        f"Sentences the worker failed to write (record sentence shown): {s['failed']}.",
        "",
        "| target | measured | result |",
        "| --- | --- | ---: |",
        *[f"| {name} | {value} | {verdict(bool(ok), bold=False)} |" for name, value, ok in _targets(results)],
        "",
        "A shown sentence is either the model's, passed by the check, or the record's (true by construction), so the"
        " 'shown' row measures the replacement with the same check; what the check's vocabularies cannot read"
        " (praise, materials, fit) is for a reader of the examples below.",
        "",
        f"## {len(results['examples'])} explanations verbatim",
        "",
    ]
    for row in results["examples"]:
        raw = " / ".join(s if s is not None else "(failed)" for s in row["raw"])
        lines += [f"- **{row['request']}**{' (+ photo)' if row['photo'] else ''}: {row['explanation']}"]
        if row["replaced"]:
            lines += [f"  - model wrote: {raw}", f"  - replaced: {' | '.join(row['replaced'])}"]
    path = report_dir / "explainer_eval.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
