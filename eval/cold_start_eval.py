"""``tandem eval cold-start``: the base model's interest topics for buyers without history.

Each SYNTHETIC test buyer is asked about as if it had no orders: its profile and request go
to the base model through :mod:`rag.cold_start` (the pipeline's own payload and parser). Two
questions:

- **valid**: does the answer parse into a JSON list of topics (distinct, non-empty)?
- **plausible**: does each topic retrieve products this buyer could stock? A topic's top 5
  text hits count as plausible when at least 3 are in a master category the buyer's business
  type sells (weight ≥ 1 in :data:`finetune.buyers.BUSINESS_TYPES`) and fit its gender.

Example:
    >>> report = evaluate_cold_start(client, "tandem-base", retriever, buyers, catalogue)  # doctest: +SKIP
    >>> report["valid_rate"]  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.report_format import machine_line, verdict
from finetune.buyers import BUSINESS_TYPES, Buyer
from llms.client import ChatClient
from rag.cold_start import cold_start_payload, parse_topics
from rag.ranker_format import product_gender
from retrieval.catalogue import Catalogue
from retrieval.hierarchical import HierarchicalRetriever
from retrieval.search import SearchQuery

__all__ = ["evaluate_cold_start", "write_cold_start_report"]

TOPICS = 4
HITS = 5
_FITS = {"Men": {"Men", "Unisex"}, "Women": {"Women", "Unisex"}, "Boys": {"Boys", "Kids", "Unisex"},
         "Girls": {"Girls", "Kids", "Unisex"}}  # fmt: skip


def _plausible(buyer: Buyer, categories: Sequence[tuple[str, ...]], genders: Sequence[str | None]) -> bool:
    masters = {m for m, w in BUSINESS_TYPES[buyer.profile.business_type]["master"].items() if w >= 1}
    fits = _FITS.get(buyer.profile.gender or "")
    good = sum(
        1 for category, gender in zip(categories, genders, strict=True)
        if category[0] in masters and (fits is None or (gender or "Unisex") in fits)
    )  # fmt: skip
    return good >= 3


def evaluate_cold_start(
    llm: ChatClient,
    model: str,
    retriever: HierarchicalRetriever,
    buyers: Sequence[Buyer],
    catalogue: Catalogue,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Validity of every answer and plausibility of every topic; the answers themselves for the first 20."""
    report = progress or (lambda done, total: None)
    rows: list[dict[str, Any]] = []

    async def main() -> None:
        for i, buyer in enumerate(buyers):
            payload = cold_start_payload(model, buyer.profile.describe(), buyer.query_text, TOPICS)
            content = str((await llm.complete(payload)).message.get("content") or "")
            topics = parse_topics(content, TOPICS)
            judged = []
            for topic in topics or []:
                hits = (await asyncio.to_thread(retriever.search, SearchQuery(text=topic), k=HITS)).hits
                products = [catalogue.get(h.product_id) for h in hits]
                categories = [tuple(h.category) for h in hits]
                genders = [product_gender(p.title) if p else None for p in products]
                judged.append({"topic": topic, "plausible": _plausible(buyer, categories, genders),
                               "categories": [" > ".join(c) for c in categories]})  # fmt: skip
            rows.append({"profile": buyer.profile.describe(), "request": buyer.query_text, "answer": content,
                         "valid": topics is not None, "distinct": len(topics or []), "topics": judged})  # fmt: skip
            report(i + 1, len(buyers))

    asyncio.run(main())
    n = max(1, len(rows))
    topics = [t for r in rows for t in r["topics"]]
    return {
        "buyers": len(rows),
        "synthetic_buyers": True,
        "topics_asked": TOPICS,
        "valid_rate": round(sum(r["valid"] for r in rows) / n, 4),
        "all_distinct_rate": round(sum(r["distinct"] == TOPICS for r in rows) / n, 4),
        "topics": len(topics),
        "plausible_topic_rate": round(sum(t["plausible"] for t in topics) / max(1, len(topics)), 4),
        "examples": rows[:20],
    }


def write_cold_start_report(results: Mapping[str, Any], report_dir: Path, model: str) -> Path:
    """``cold_start.json`` and ``cold_start.md`` in ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "cold_start.json").write_text(json.dumps({**results, "model": model}, indent=2), encoding="utf-8")
    valid = results["valid_rate"]
    lines = [
        "# Cold start: interest topics for buyers without history (SYNTHETIC buyers)",
        "",
        "> The buyers are **synthetic** (`finetune/buyers.py`); each is asked about as if it had no orders yet.",
        "",
        machine_line(),
        f"Model: {model}, greedy, asked for {results['topics_asked']} topics with a JSON-schema `response_format`"
        " (guided decoding in the embedded worker and vLLM).",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| buyers | {results['buyers']} |",
        f"| valid JSON topic lists | {valid:.1%} |",
        f"| lists of {results['topics_asked']} distinct topics | {results['all_distinct_rate']:.1%} |",
        f"| topics whose top {HITS} text hits fit the buyer (≥ 3 in its business's categories and gender) |"
        f" {results['plausible_topic_rate']:.1%} of {results['topics']} |",
        "",
        "| target | measured | result |",
        "| --- | --- | ---: |",
        f"| valid topic lists ≥ 95 % | {valid:.1%} | {verdict(valid >= 0.95, bold=False)} |",
        "",
        "## Answers verbatim",
        "",
    ]
    for row in results["examples"]:
        topics = "; ".join(f"{t['topic']} ({'fits' if t['plausible'] else 'does not fit'}: {t['categories'][0]})"
                           for t in row["topics"] if t["categories"])  # fmt: skip
        lines.append(f"- {row['profile']} | *{row['request']}* → `{row['answer']}` → {topics}")
    path = report_dir / "cold_start.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
