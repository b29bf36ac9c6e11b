"""The explainer on SYNTHETIC test requests: does it name only ranked products?

For each case the first ``top`` candidates stand in for the ranking; the base model writes the
explanation through the embedded worker's code path, and
:class:`rag.explanation_check.ExplanationChecker` flags every product title or catalogue id
it names that the ranking does not hold.

Example:
    >>> evaluate_explainer(service, "tandem-base", catalogue, cases)["flagged_rate"]  # doctest: +SKIP
    0.02
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from finetune.ranking_data import RankingCase, request_text
from rag.explainer_prompt import expand_references, explainer_messages
from rag.explanation_check import ExplanationChecker
from retrieval.catalogue import Catalogue

__all__ = ["evaluate_explainer"]


def evaluate_explainer(
    service: Any,
    model: str,
    catalogue: Catalogue,
    cases: Sequence[RankingCase],
    *,
    top: int = 5,
    max_tokens: int = 160,
    concurrency: int = 8,
    examples: int = 3,
) -> dict[str, Any]:
    """Rates of flagged explanations (a product outside the ranking named) and of ones naming a ranked product."""
    from llms.protocol import ChatCompletionRequest

    checker = ExplanationChecker(catalogue.products)

    async def one(case: RankingCase, gate: asyncio.Semaphore) -> tuple[str, list[str], bool, bool]:
        ranked = [p for p in (catalogue.get(c) for c in case.candidates[:top]) if p is not None]
        request = request_text(case.buyer)
        body = {"model": model, "messages": explainer_messages(request, ranked), "temperature": 0.0,
                "max_tokens": max_tokens}  # fmt: skip
        async with gate:
            answer = await service.complete(ChatCompletionRequest.model_validate(body))
        text = expand_references(str(answer["choices"][0]["message"].get("content") or ""), ranked)
        check = checker.check(text, ranked)
        return text, [m.text for m in check.flagged], check.ok, check.names_ranked

    async def main() -> list[tuple[str, list[str], bool, bool]]:
        gate = asyncio.Semaphore(concurrency)
        return list(await asyncio.gather(*(one(c, gate) for c in cases)))

    rows = asyncio.run(main())
    n = max(1, len(rows))
    return {
        "explanations": len(rows),
        "flagged_rate": round(sum(not ok for _, _, ok, _ in rows) / n, 4),
        "names_ranked_rate": round(sum(named for *_, named in rows) / n, 4),
        "examples": [{"text": text, "flagged": flagged} for text, flagged, _, _ in rows[:examples]],
    }
