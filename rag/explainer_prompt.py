"""The explainer's prompt: the buyer's request and the ranked products (catalogue ids, titles, attributes).

Example:
    >>> messages = explainer_messages("navy shirts for men", ranked)  # doctest: +SKIP
    >>> messages[0]["role"], messages[1]["content"].startswith("Request: navy shirts")  # doctest: +SKIP
    ('system', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prompts import load_prompt
from rag.ranker_format import product_line
from retrieval.catalogue import Product

__all__ = ["explainer_messages"]


def explainer_messages(request: str, ranked: Sequence[Product]) -> list[dict[str, Any]]:
    """System and user messages asking for a short explanation that names only ``ranked`` products."""
    ranking = "\n".join(f"{i}. {product_line(p)}" for i, p in enumerate(ranked, 1))
    return [
        {"role": "system", "content": load_prompt("explainer_system")},
        {"role": "user", "content": load_prompt("explainer_user").format(request=request, ranking=ranking)},
    ]
