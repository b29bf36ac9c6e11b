"""The explainer's prompt, and the names it refers to: ``#1``, ``#2``, … become the ranked products' titles.

The explainer refers to products by rank (``#2 adds a black option``) and Tandem writes the
names in: a model then cannot misspell a title or name a product the ranking does not hold
by accident, and a small model only has to copy a number. :class:`ReferenceExpander` does it
on a stream (a ``#1`` split across chunks included).

Example:
    >>> from retrieval.catalogue import Product
    >>> shirt = Product("1", "Turtle Men Navy Shirt", ("Apparel", "Topwear", "Shirts"), {}, None)
    >>> expand_references("#1 is navy; #4 is not ranked.", [shirt])
    'Turtle Men Navy Shirt is navy; #4 is not ranked.'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from prompts import load_prompt
from rag.ranker_format import product_line
from retrieval.catalogue import Product

__all__ = ["ReferenceExpander", "expand_references", "explainer_messages"]

_REF = re.compile(r"#(\d+)")
_OPEN_REF = re.compile(r"#\d*$")


def explainer_messages(request: str, ranked: Sequence[Product]) -> list[dict[str, Any]]:
    """System and user messages asking for a short explanation of ``ranked``, products referred to as #1, #2, …"""
    ranking = "\n".join(f"#{i} {product_line(p)}" for i, p in enumerate(ranked, 1))
    return [
        {"role": "system", "content": load_prompt("explainer_system")},
        {"role": "user", "content": load_prompt("explainer_user").format(request=request, ranking=ranking)},
    ]


def expand_references(text: str, ranked: Sequence[Product]) -> str:
    """``#k`` → the title of the k-th ranked product; a rank outside the list stays (the check flags it)."""

    def name(match: re.Match[str]) -> str:
        k = int(match.group(1))
        return ranked[k - 1].title if 1 <= k <= len(ranked) else match.group(0)

    return _REF.sub(name, text)


class ReferenceExpander:
    """:func:`expand_references` over a stream: holds back a trailing ``#`` or ``#1`` until it is complete.

    Example:
        >>> expander = ReferenceExpander([shirt])  # doctest: +SKIP
        >>> expander.feed("Try #"), expander.feed("1 today"), expander.flush()  # doctest: +SKIP
        ('Try ', 'Turtle Men Navy Shirt today', '')
    """

    def __init__(self, ranked: Sequence[Product]) -> None:
        self.ranked = list(ranked)
        self._held = ""

    def feed(self, delta: str) -> str:
        text = self._held + delta
        open_ref = _OPEN_REF.search(text)
        cut = open_ref.start() if open_ref else len(text)
        self._held = text[cut:]
        return expand_references(text[:cut], self.ranked)

    def flush(self) -> str:
        text, self._held = self._held, ""
        return expand_references(text, self.ranked)
