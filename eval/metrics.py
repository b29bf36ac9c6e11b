"""Ranking metrics for offline retrieval evaluation.

Pure NumPy / standard-library implementations of the per-query metrics used to
score Tandem's retrieval stages, plus helpers to aggregate them over queries.

Conventions shared by the ranking metrics:

* ``ranked`` is a sequence of item ids in rank order (best first). Rank
  positions start at 1.
* ``relevance`` maps item id -> graded relevance, an integer ``>= 0``. Ids that
  are missing from the mapping have grade 0. A negative grade anywhere in the
  mapping raises :class:`ValueError`.
* An item is *relevant* when its grade is ``>= threshold`` (default 1). The
  threshold must be ``>= 1`` so that ungraded items are never relevant.
* ``k`` must be a positive integer; ``k <= 0`` raises :class:`ValueError`.
  When ``ranked`` holds fewer than ``k`` items the missing slots count as
  non-relevant (so precision still divides by ``k``).
* **Duplicate ids** in ``ranked`` count only once: the first occurrence is
  scored normally, and every later occurrence keeps its rank position (it still
  uses up one of the ``k`` slots) but contributes no hit and zero gain. A
  system that repeats an item is therefore penalised rather than rewarded.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from numbers import Integral
from typing import TypeVar

import numpy as np

__all__ = [
    "average_precision_at_k",
    "category_recall",
    "dcg_at_k",
    "latency_percentiles",
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
    "reciprocal_rank",
    "searched_fraction",
    "summarize",
]

ItemId = TypeVar("ItemId", bound=Hashable)
Category = TypeVar("Category", bound=Hashable)


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #


def _check_k(k: int, name: str = "k") -> None:
    if isinstance(k, bool) or not isinstance(k, Integral):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"{name} must be a positive integer, got {k}")


def _check_threshold(threshold: int) -> None:
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1 (grade 0 means non-relevant), got {threshold}")


def _check_relevance(relevance: Mapping[ItemId, int]) -> None:
    for item, grade in relevance.items():
        if grade < 0:
            raise ValueError(f"relevance grades must be >= 0, got {grade!r} for item {item!r}")


def _grades_top_k(ranked: Sequence[ItemId], relevance: Mapping[ItemId, int], k: int) -> list[int]:
    """Grades of the first ``k`` rank positions; repeated ids get grade 0."""
    seen: set[ItemId] = set()
    grades: list[int] = []
    for item in ranked[:k]:
        if item in seen:
            grades.append(0)
        else:
            seen.add(item)
            grades.append(relevance.get(item, 0))
    return grades


def _num_relevant(relevance: Mapping[ItemId, int], threshold: int) -> int:
    return sum(1 for grade in relevance.values() if grade >= threshold)


# --------------------------------------------------------------------------- #
# Ranking metrics
# --------------------------------------------------------------------------- #


def precision_at_k(
    ranked: Sequence[ItemId],
    relevance: Mapping[ItemId, int],
    k: int,
    threshold: int = 1,
) -> float:
    """Fraction of the top-``k`` slots holding a relevant item.

    Always divides by ``k``, even when ``ranked`` has fewer than ``k`` items.

    >>> precision_at_k(["a", "b", "c"], {"a": 2, "c": 1}, k=4)
    0.5
    """
    _check_k(k)
    _check_threshold(threshold)
    _check_relevance(relevance)
    hits = sum(1 for g in _grades_top_k(ranked, relevance, k) if g >= threshold)
    return hits / k


def recall_at_k(
    ranked: Sequence[ItemId],
    relevance: Mapping[ItemId, int],
    k: int,
    threshold: int = 1,
) -> float:
    """Relevant items found in the top ``k`` over all relevant items.

    The denominator is the number of ids in ``relevance`` with grade
    ``>= threshold``. When there are no relevant items the recall is undefined;
    this returns ``0.0`` (rather than ``1.0`` or NaN) so that such queries never
    inflate an average and ``summarize`` stays NaN-free. Filter those queries
    out beforehand if they should not count at all.

    >>> recall_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 3}, k=2)
    0.3333333333333333
    """
    _check_k(k)
    _check_threshold(threshold)
    _check_relevance(relevance)
    total = _num_relevant(relevance, threshold)
    if total == 0:
        return 0.0
    hits = sum(1 for g in _grades_top_k(ranked, relevance, k) if g >= threshold)
    return hits / total


def dcg_at_k(gains_in_rank_order: Sequence[float], k: int) -> float:
    """Discounted cumulative gain of the first ``k`` grades.

    Uses the exponential gain form ``sum_i (2**rel_i - 1) / log2(i + 1)`` with
    rank ``i`` starting at 1. Grades must be ``>= 0``.

    >>> dcg_at_k([3, 0, 1], k=3)  # 7/1 + 0/log2(3) + 1/2
    7.5
    """
    _check_k(k)
    gains = np.asarray(list(gains_in_rank_order[:k]), dtype=np.float64)
    if gains.size == 0:
        return 0.0
    if np.any(gains < 0):
        raise ValueError(f"relevance grades must be >= 0, got {gains.tolist()}")
    discounts = np.log2(np.arange(2, gains.size + 2, dtype=np.float64))
    return float(np.sum((np.exp2(gains) - 1.0) / discounts))


def ndcg_at_k(
    ranked: Sequence[ItemId],
    relevance: Mapping[ItemId, int],
    k: int,
) -> float:
    """Normalised DCG: DCG@k of ``ranked`` divided by the ideal DCG@k.

    The ideal ranking sorts *all* grades in ``relevance`` in descending order,
    so relevant items that were never retrieved lower the score. Returns
    ``0.0`` when the ideal DCG is 0 (no item has a positive grade).

    >>> ndcg_at_k(["a", "b"], {"a": 1, "b": 1}, k=2)
    1.0
    """
    _check_k(k)
    _check_relevance(relevance)
    ideal = dcg_at_k(sorted(relevance.values(), reverse=True), k)
    if ideal == 0.0:
        return 0.0
    return dcg_at_k(_grades_top_k(ranked, relevance, k), k) / ideal


def average_precision_at_k(
    ranked: Sequence[ItemId],
    relevance: Mapping[ItemId, int],
    k: int,
    threshold: int = 1,
) -> float:
    """Average precision at ``k`` for one query (average it to get MAP@k).

    Sums precision@i over every rank ``i <= k`` that holds a relevant item and
    divides by ``min(k, number of relevant items)``. Returns ``0.0`` when
    ``relevance`` has no relevant items. In the example: ``(1/1 + 2/3) / 2``.

    >>> average_precision_at_k(["a", "x", "b"], {"a": 1, "b": 1}, k=3)
    0.8333333333333333
    """
    _check_k(k)
    _check_threshold(threshold)
    _check_relevance(relevance)
    total = _num_relevant(relevance, threshold)
    if total == 0:
        return 0.0
    hits = 0
    score = 0.0
    for rank, grade in enumerate(_grades_top_k(ranked, relevance, k), start=1):
        if grade >= threshold:
            hits += 1
            score += hits / rank
    return score / min(k, total)


def reciprocal_rank(
    ranked: Sequence[ItemId],
    relevance: Mapping[ItemId, int],
    threshold: int = 1,
    k: int | None = None,
) -> float:
    """``1 / rank`` of the first relevant item, or ``0.0`` if there is none.

    With ``k`` given only the first ``k`` positions are searched (MRR@k).

    >>> reciprocal_rank(["x", "y", "a"], {"a": 1})
    0.3333333333333333
    >>> reciprocal_rank(["x", "y", "a"], {"a": 1}, k=2)
    0.0
    """
    if k is not None:
        _check_k(k)
    _check_threshold(threshold)
    _check_relevance(relevance)
    limit = len(ranked) if k is None else k
    for rank, grade in enumerate(_grades_top_k(ranked, relevance, limit), start=1):
        if grade >= threshold:
            return 1.0 / rank
    return 0.0


# --------------------------------------------------------------------------- #
# Hierarchical-retrieval metrics
# --------------------------------------------------------------------------- #


def category_recall(kept_categories: Collection[Category], true_category: Category) -> float:
    """``1.0`` if the query's true category survived the coarse stage, else ``0.0``.

    >>> category_recall({"shoes", "bags"}, "bags")
    1.0
    """
    return 1.0 if true_category in kept_categories else 0.0


def searched_fraction(searched_count: int, catalogue_size: int) -> float:
    """Share of the catalogue that the fine stage actually scored, in ``[0, 1]``.

    Raises :class:`ValueError` if ``catalogue_size <= 0`` or ``searched_count``
    lies outside ``[0, catalogue_size]``.

    >>> searched_fraction(250, 1000)
    0.25
    """
    if catalogue_size <= 0:
        raise ValueError(f"catalogue_size must be positive, got {catalogue_size}")
    if not 0 <= searched_count <= catalogue_size:
        raise ValueError(f"searched_count must be in [0, catalogue_size={catalogue_size}], got {searched_count}")
    return searched_count / catalogue_size


# --------------------------------------------------------------------------- #
# Aggregation
# --------------------------------------------------------------------------- #


def summarize(per_query: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric across queries.

    Every query must report exactly the same metric names; the result keeps
    the key order of the first query. Raises :class:`ValueError` for an empty
    list or mismatched keys.

    >>> summarize([{"ndcg@10": 1.0}, {"ndcg@10": 0.5}])
    {'ndcg@10': 0.75}
    """
    if not per_query:
        raise ValueError("summarize() needs at least one per-query result")
    keys = list(per_query[0])
    expected = set(keys)
    for index, row in enumerate(per_query):
        if set(row) != expected:
            missing = sorted(expected - set(row))
            extra = sorted(set(row) - expected)
            raise ValueError(f"query {index} has mismatched metric keys: missing={missing}, unexpected={extra}")
    return {key: float(np.mean(np.asarray([row[key] for row in per_query], np.float64))) for key in keys}


def latency_percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50, p95 and mean of per-query latencies in milliseconds.

    Percentiles use NumPy's ``"linear"`` method. Raises :class:`ValueError`
    for an empty input or a negative / non-finite latency.

    >>> latency_percentiles([10.0, 20.0, 30.0, 40.0])
    {'latency_ms_p50': 25.0, 'latency_ms_p95': 38.5, 'latency_ms_mean': 25.0}
    """
    values = np.asarray(list(latencies_ms), dtype=np.float64)
    if values.size == 0:
        raise ValueError("latency_percentiles() needs at least one latency")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("latencies must be finite and >= 0")
    return {
        "latency_ms_p50": float(np.percentile(values, 50, method="linear")),
        "latency_ms_p95": float(np.percentile(values, 95, method="linear")),
        "latency_ms_mean": float(np.mean(values)),
    }
