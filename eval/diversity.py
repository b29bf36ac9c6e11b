"""Diversity of recommendation lists: intra-list diversity (ILD), coverage and novelty.

- **ILD@K on embeddings**: the mean pairwise distance ``1 − cos(a, b)`` over the first K items
  (image or text vectors; vectors are normalised here, so any scale works).
- **ILD@K on the category path**: the share of distinct full paths among the K items, and the
  mean pairwise *tree distance* — the levels below the deepest common ancestor, over the path
  depth (0 for the same category, 1 for different top-level categories).
- **Coverage** across many lists: distinct products and categories shown, over the catalogue's.
- **Novelty**: the mean self-information ``−log2 p`` of the items, ``p`` their popularity
  (for example the share of lists, or of the catalogue, that a category takes).

A list of fewer than two items has no pairs; its ILD is 0 by definition.

Example:
    >>> import numpy as np
    >>> round(ild(np.array([[1.0, 0.0], [0.0, 1.0]])), 3)
    1.0
    >>> tree_distance(("Apparel", "Topwear", "Shirts"), ("Apparel", "Bottomwear", "Jeans"))
    0.6666666666666666
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)

__all__ = [
    "CoverageTracker",
    "category_ild",
    "distinct_path_share",
    "ild",
    "novelty",
    "purchase_popularity",
    "tree_distance",
]


def ild(vectors: np.ndarray | Sequence[Sequence[float]], k: int | None = None) -> float:
    """Mean pairwise ``1 − cosine`` over the first ``k`` rows (all rows when ``k`` is None)."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (items × dimensions), got shape {x.shape}")
    if k is not None:
        if k <= 0:
            raise ValueError("k must be positive")
        x = x[:k]
    n = len(x)
    if n < 2:
        return 0.0
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("a zero vector has no direction: cannot measure its distance")
    x = x / norms
    sims = x @ x.T
    upper = sims[np.triu_indices(n, k=1)]
    return float(np.mean(1.0 - upper))


def tree_distance(a: Sequence[str], b: Sequence[str]) -> float:
    """Levels below the deepest common ancestor, over the deeper path's depth (0 = same category)."""
    depth = max(len(a), len(b))
    if depth == 0:
        return 0.0
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return (depth - common) / depth


def category_ild(paths: Sequence[Sequence[str]], k: int | None = None) -> float:
    """Mean pairwise :func:`tree_distance` over the first ``k`` category paths."""
    chosen = list(paths[:k] if k is not None else paths)
    n = len(chosen)
    if n < 2:
        return 0.0
    total = sum(tree_distance(chosen[i], chosen[j]) for i in range(n) for j in range(i + 1, n))
    return total / (n * (n - 1) / 2)


def distinct_path_share(paths: Sequence[Sequence[str]], k: int | None = None) -> float:
    """Distinct full category paths among the first ``k`` items, over the number of items (1.0 = all differ)."""
    chosen = [tuple(p) for p in (paths[:k] if k is not None else paths)]
    return len(set(chosen)) / len(chosen) if chosen else 0.0


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
