"""Diversity across many lists, for the experiments: coverage and novelty.

- **Coverage** across many lists: distinct products and categories shown, over the catalogue's.
- **Novelty**: the mean self-information ``−log2 p`` of the items, ``p`` their popularity
  (for example the share of lists, or of the catalogue, that a category takes).

The per-list measures (ILD on vectors and on the category path) are product code and live in
:mod:`rag.diversity`.

Example:
    >>> round(novelty(["a", "b"], {"a": 0.5, "b": 0.25}), 3)
    1.5
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)

__all__ = ["CoverageTracker", "novelty", "purchase_popularity"]


def novelty(items: Iterable[K], popularity: Mapping[K, float], *, floor: float = 1e-6) -> float:
    """Mean ``−log2 p(item)``; an item missing from ``popularity`` counts at ``floor`` (maximally novel)."""
    values = [-math.log2(max(float(popularity.get(i, 0.0)), floor)) for i in items]
    return float(np.mean(values)) if values else 0.0


def purchase_popularity(purchases: Iterable[K], items: Iterable[K]) -> dict[K, float]:
    """Each item's share of the purchases, add-one smoothed so an item nobody bought is novel, not infinite.

    Example:
        >>> purchase_popularity(["a", "a", "b"], ["a", "b", "c"])
        {'a': 0.5, 'b': 0.3333333333333333, 'c': 0.16666666666666666}
    """
    counts: dict[K, int] = {}
    for item in purchases:
        counts[item] = counts.get(item, 0) + 1
    universe = list(dict.fromkeys([*items, *counts]))
    total = sum(counts.values()) + len(universe)
    return {item: (counts.get(item, 0) + 1) / total for item in universe}


@dataclass
class CoverageTracker:
    """Distinct products and categories shown across many lists, against the catalogue's totals.

    Example:
        >>> cov = CoverageTracker(n_products=100, n_categories=10)
        >>> cov.add(["p1", "p2"], [("A", "x"), ("A", "y")]); cov.add(["p2"], [("A", "y")])
        >>> cov.product_coverage, cov.category_coverage
        (0.02, 0.2)
    """

    n_products: int
    n_categories: int

    def __post_init__(self) -> None:
        if self.n_products <= 0 or self.n_categories <= 0:
            raise ValueError("the catalogue's product and category counts must be positive")
        self._products: set[Hashable] = set()
        self._categories: set[tuple[str, ...]] = set()
        self.lists = 0

    def add(self, product_ids: Iterable[Hashable], paths: Iterable[Sequence[str]]) -> None:
        self._products.update(product_ids)
        self._categories.update(tuple(p) for p in paths)
        self.lists += 1

    @property
    def product_coverage(self) -> float:
        return len(self._products) / self.n_products

    @property
    def category_coverage(self) -> float:
        return len(self._categories) / self.n_categories
