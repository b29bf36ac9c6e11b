"""Tests for eval.metrics: hand-computed cases, edge cases and invariants."""

from __future__ import annotations

import doctest
import math
import random
from collections.abc import Callable

import numpy as np
import pytest

import eval.metrics as metrics_module
from eval.metrics import (
    average_precision_at_k,
    category_recall,
    dcg_at_k,
    latency_percentiles,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
    searched_fraction,
    summarize,
)

# Shared fixture: grades in rank order are [3, 2, 0, 1] for ranked a, b, x, c.
RANKED = ["a", "b", "x", "c"]
RELEVANCE = {"a": 3, "b": 2, "c": 1, "d": 0}


def test_public_api_matches_all() -> None:
    assert sorted(metrics_module.__all__) == [
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
    for name in metrics_module.__all__:
        assert callable(getattr(metrics_module, name))


def test_docstring_examples() -> None:
    result = doctest.testmod(metrics_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10
    assert result.failed == 0


# --------------------------------------------------------------------------- #
# precision@k
# --------------------------------------------------------------------------- #


def test_precision_hand_computed() -> None:
    # top-2 = a(3), b(2): 2 hits / 2
    assert precision_at_k(RANKED, RELEVANCE, 2) == 1.0
    # top-3 = a, b, x(0): 2 hits / 3
    assert precision_at_k(RANKED, RELEVANCE, 3) == pytest.approx(2 / 3)
    # top-4 = a, b, x, c(1): 3 hits / 4
    assert precision_at_k(RANKED, RELEVANCE, 4) == 0.75


def test_precision_threshold() -> None:
    # threshold 2: relevant = a(3), b(2); top-4 has 2 hits / 4
    assert precision_at_k(RANKED, RELEVANCE, 4, threshold=2) == 0.5
    # threshold 3: only a; 1 / 4
    assert precision_at_k(RANKED, RELEVANCE, 4, threshold=3) == 0.25


def test_precision_divides_by_k_when_list_is_short() -> None:
    # 4 results, k=10: 3 hits / 10 (missing slots count as misses)
    assert precision_at_k(RANKED, RELEVANCE, 10) == pytest.approx(0.3)


def test_precision_empty_ranking_and_no_relevant() -> None:
    assert precision_at_k([], RELEVANCE, 5) == 0.0
    assert precision_at_k(RANKED, {}, 3) == 0.0
    assert precision_at_k(RANKED, {"a": 0, "b": 0}, 3) == 0.0


def test_precision_duplicates_count_once() -> None:
    # ranks: a(hit), a(duplicate -> 0), b(hit): 2 hits / 3, not 3/3
    assert precision_at_k(["a", "a", "b"], {"a": 1, "b": 1}, 3) == pytest.approx(2 / 3)
    # the duplicate still uses a slot: top-2 = a, a -> 1 hit / 2
    assert precision_at_k(["a", "a", "b"], {"a": 1, "b": 1}, 2) == 0.5


# --------------------------------------------------------------------------- #
# recall@k
# --------------------------------------------------------------------------- #


def test_recall_hand_computed() -> None:
    # relevant (grade >= 1) = {a, b, c} -> 3; d has grade 0
    # top-1 = a -> 1/3; top-3 = a, b, x -> 2/3; top-4 adds c -> 3/3
    assert recall_at_k(RANKED, RELEVANCE, 1) == pytest.approx(1 / 3)
    assert recall_at_k(RANKED, RELEVANCE, 3) == pytest.approx(2 / 3)
    assert recall_at_k(RANKED, RELEVANCE, 4) == 1.0


def test_recall_threshold() -> None:
    # threshold 2: relevant = {a, b}; top-1 -> 1/2, top-2 -> 2/2
    assert recall_at_k(RANKED, RELEVANCE, 1, threshold=2) == 0.5
    assert recall_at_k(RANKED, RELEVANCE, 2, threshold=2) == 1.0


def test_recall_edge_cases() -> None:
    # no relevant items -> documented 0.0
    assert recall_at_k(RANKED, {}, 3) == 0.0
    assert recall_at_k(RANKED, {"a": 0}, 3) == 0.0
    # empty ranking
    assert recall_at_k([], RELEVANCE, 3) == 0.0
    # k larger than list: same as the full list, 3/3
    assert recall_at_k(RANKED, RELEVANCE, 100) == 1.0
    # duplicates cannot push recall above 1: a, a, a -> 1 hit of 2 relevant
    assert recall_at_k(["a", "a", "a"], {"a": 1, "b": 1}, 3) == 0.5


# --------------------------------------------------------------------------- #
# DCG / NDCG
# --------------------------------------------------------------------------- #


def test_dcg_hand_computed() -> None:
    # grades [3, 2, 0, 1]:
    #   (2^3-1)/log2(2) + (2^2-1)/log2(3) + (2^0-1)/log2(4) + (2^1-1)/log2(5)
    # = 7/1 + 3/1.58496 + 0/2 + 1/2.32193 = 7 + 1.89279 + 0 + 0.43068 = 9.32347
    expected = 7.0 + 3.0 / math.log2(3) + 0.0 + 1.0 / math.log2(5)
    assert dcg_at_k([3, 2, 0, 1], 4) == pytest.approx(expected)
    assert dcg_at_k([3, 2, 0, 1], 4) == pytest.approx(9.32347, abs=1e-5)
    # k=2 truncates: 7 + 3/log2(3)
    assert dcg_at_k([3, 2, 0, 1], 2) == pytest.approx(7.0 + 3.0 / math.log2(3))
    # k beyond length is the full sum
    assert dcg_at_k([3, 2, 0, 1], 50) == pytest.approx(expected)


def test_dcg_edge_cases() -> None:
    assert dcg_at_k([], 5) == 0.0
    assert dcg_at_k([0, 0, 0], 3) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        dcg_at_k([1, -1], 2)
    with pytest.raises(ValueError, match="positive"):
        dcg_at_k([1, 2], 0)


def test_ndcg_hand_computed() -> None:
    # ranked a, b, x, c -> grades [3, 2, 0, 1]; ideal from all grades
    # {3, 2, 1, 0} sorted desc = [3, 2, 1, 0]
    #   DCG  = 7 + 3/log2(3) + 0/log2(4) + 1/log2(5) = 9.32347
    #   IDCG = 7 + 3/log2(3) + 1/log2(4) + 0/log2(5) = 7 + 1.89279 + 0.5 = 9.39279
    #   NDCG = 9.32347 / 9.39279 = 0.99262
    dcg = 7.0 + 3.0 / math.log2(3) + 1.0 / math.log2(5)
    idcg = 7.0 + 3.0 / math.log2(3) + 1.0 / 2.0
    assert ndcg_at_k(RANKED, RELEVANCE, 4) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(RANKED, RELEVANCE, 4) == pytest.approx(0.99262, abs=1e-5)


def test_ndcg_ideal_includes_unretrieved_items() -> None:
    # Only "b" (grade 1) is retrieved; "a" (grade 3) was missed.
    #   DCG@2  = (2^1-1)/log2(2) = 1
    #   IDCG@2 = (2^3-1)/1 + (2^1-1)/log2(3) = 7 + 0.63093 = 7.63093
    relevance = {"a": 3, "b": 1}
    expected = 1.0 / (7.0 + 1.0 / math.log2(3))
    assert ndcg_at_k(["b"], relevance, 2) == pytest.approx(expected)


def test_ndcg_truncates_ideal_at_k() -> None:
    # k=1: DCG@1 = grade of a = 3 -> 7; IDCG@1 = 7 -> 1.0 even though b, c unseen
    assert ndcg_at_k(RANKED, RELEVANCE, 1) == 1.0
    # k=1 with the worst item first: DCG@1 = 0 -> 0.0
    assert ndcg_at_k(["x", "a"], RELEVANCE, 1) == 0.0


def test_ndcg_edge_cases() -> None:
    # ideal DCG is 0 -> 0.0
    assert ndcg_at_k(RANKED, {}, 3) == 0.0
    assert ndcg_at_k(RANKED, {"a": 0, "b": 0}, 3) == 0.0
    # empty ranking
    assert ndcg_at_k([], RELEVANCE, 3) == 0.0
    # k larger than list equals k = full length when the list covers all relevant
    assert ndcg_at_k(RANKED, RELEVANCE, 100) == pytest.approx(ndcg_at_k(RANKED, RELEVANCE, 4))


def test_ndcg_duplicates_count_once() -> None:
    # a, a -> grades [1, 0] (duplicate scores 0); ideal for {a:1, b:1} = [1, 1]
    #   DCG = 1, IDCG = 1 + 1/log2(3) = 1.63093 -> 0.61315
    relevance = {"a": 1, "b": 1}
    expected = 1.0 / (1.0 + 1.0 / math.log2(3))
    assert ndcg_at_k(["a", "a"], relevance, 2) == pytest.approx(expected)
    assert ndcg_at_k(["a", "a", "a", "a"], {"a": 3}, 4) == 1.0


# --------------------------------------------------------------------------- #
# average precision@k
# --------------------------------------------------------------------------- #


def test_average_precision_hand_computed() -> None:
    # relevant = {a, b, c} (3); hits at ranks 1 (a), 2 (b), 4 (c)
    #   P@1 = 1/1, P@2 = 2/2, P@4 = 3/4
    #   k=4: (1 + 1 + 0.75) / min(4, 3) = 2.75 / 3 = 0.91667
    assert average_precision_at_k(RANKED, RELEVANCE, 4) == pytest.approx(2.75 / 3)
    #   k=3: hits at 1, 2 -> (1 + 1) / min(3, 3) = 2/3
    assert average_precision_at_k(RANKED, RELEVANCE, 3) == pytest.approx(2 / 3)
    #   k=2: (1 + 1) / min(2, 3) = 1.0
    assert average_precision_at_k(RANKED, RELEVANCE, 2) == 1.0


def test_average_precision_late_hits() -> None:
    # ranked x, a, y, b; relevant {a, b}
    #   hits at 2 (P=1/2) and 4 (P=2/4) -> (0.5 + 0.5) / min(4, 2) = 0.5
    relevance = {"a": 1, "b": 2}
    assert average_precision_at_k(["x", "a", "y", "b"], relevance, 4) == 0.5


def test_average_precision_threshold() -> None:
    # threshold 2: relevant = {a, b}; hits at 1, 2 -> (1 + 1) / 2 = 1.0
    assert average_precision_at_k(RANKED, RELEVANCE, 4, threshold=2) == 1.0
    # threshold 3: relevant = {a}; hit at 1 -> 1 / 1
    assert average_precision_at_k(RANKED, RELEVANCE, 4, threshold=3) == 1.0


def test_average_precision_edge_cases() -> None:
    assert average_precision_at_k(RANKED, {}, 3) == 0.0
    assert average_precision_at_k(RANKED, {"a": 0}, 3) == 0.0
    assert average_precision_at_k([], RELEVANCE, 3) == 0.0
    # k larger than list: hits at 1, 2, 4 -> 2.75 / min(100, 3)
    assert average_precision_at_k(RANKED, RELEVANCE, 100) == pytest.approx(2.75 / 3)
    # duplicates: a, a, b with relevant {a, b}
    #   hits at 1 (P=1/1) and 3 (P=2/3); rank 2 is the duplicate -> miss
    #   (1 + 2/3) / 2 = 0.83333
    assert average_precision_at_k(["a", "a", "b"], {"a": 1, "b": 1}, 3) == pytest.approx((1 + 2 / 3) / 2)


# --------------------------------------------------------------------------- #
# reciprocal rank
# --------------------------------------------------------------------------- #


def test_reciprocal_rank_hand_computed() -> None:
    assert reciprocal_rank(RANKED, RELEVANCE) == 1.0
    # first relevant (c) at rank 3 -> 1/3
    assert reciprocal_rank(["x", "y", "c"], RELEVANCE) == pytest.approx(1 / 3)
    # threshold 2 skips c(1) at rank 1; b(2) at rank 2 -> 1/2
    assert reciprocal_rank(["c", "b"], RELEVANCE, threshold=2) == 0.5


def test_reciprocal_rank_with_k() -> None:
    ranked = ["x", "y", "c"]
    assert reciprocal_rank(ranked, RELEVANCE, k=3) == pytest.approx(1 / 3)
    assert reciprocal_rank(ranked, RELEVANCE, k=2) == 0.0
    assert reciprocal_rank(ranked, RELEVANCE, k=100) == pytest.approx(1 / 3)


def test_reciprocal_rank_edge_cases() -> None:
    assert reciprocal_rank([], RELEVANCE) == 0.0
    assert reciprocal_rank(RANKED, {}) == 0.0
    assert reciprocal_rank(["x", "y"], RELEVANCE) == 0.0
    # a repeated id is not a new hit: x, x, a -> first hit at rank 3
    assert reciprocal_rank(["x", "x", "a"], {"a": 1}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["a", "a"], {"a": 1}) == 1.0
    with pytest.raises(ValueError, match="positive"):
        reciprocal_rank(RANKED, RELEVANCE, k=0)


# --------------------------------------------------------------------------- #
# validation shared by the ranking metrics
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("k", [0, -1, -10])
def test_non_positive_k_raises(k: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        precision_at_k(RANKED, RELEVANCE, k)
    with pytest.raises(ValueError, match="positive"):
        recall_at_k(RANKED, RELEVANCE, k)
    with pytest.raises(ValueError, match="positive"):
        dcg_at_k([1, 2], k)
    with pytest.raises(ValueError, match="positive"):
        ndcg_at_k(RANKED, RELEVANCE, k)
    with pytest.raises(ValueError, match="positive"):
        average_precision_at_k(RANKED, RELEVANCE, k)
    with pytest.raises(ValueError, match="positive"):
        reciprocal_rank(RANKED, RELEVANCE, k=k)


def test_non_integer_k_raises_type_error() -> None:
    with pytest.raises(TypeError):
        precision_at_k(RANKED, RELEVANCE, 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ndcg_at_k(RANKED, RELEVANCE, True)


def test_numpy_integer_k_is_accepted() -> None:
    assert precision_at_k(RANKED, RELEVANCE, np.int64(2)) == 1.0  # type: ignore[arg-type]


def test_negative_grade_raises() -> None:
    bad = {"a": 2, "b": -1}
    calls: list[Callable[[], float]] = [
        lambda: precision_at_k(["a"], bad, 1),
        lambda: recall_at_k(["a"], bad, 1),
        lambda: ndcg_at_k(["a"], bad, 1),
        lambda: average_precision_at_k(["a"], bad, 1),
        lambda: reciprocal_rank(["a"], bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=">= 0"):
            call()


def test_threshold_below_one_raises() -> None:
    with pytest.raises(ValueError, match="threshold"):
        precision_at_k(RANKED, RELEVANCE, 2, threshold=0)
    with pytest.raises(ValueError, match="threshold"):
        recall_at_k(RANKED, RELEVANCE, 2, threshold=0)


def test_works_with_int_ids_and_tuples() -> None:
    assert precision_at_k((10, 20, 30), {20: 1}, 3) == pytest.approx(1 / 3)
    assert reciprocal_rank([(1, "x"), (2, "y")], {(2, "y"): 2}) == 0.5


# --------------------------------------------------------------------------- #
# invariants on random cases
# --------------------------------------------------------------------------- #


def _random_case(rng: random.Random) -> tuple[list[int], dict[int, int], int]:
    n_items = rng.randint(1, 30)
    relevance = {i: rng.choice([0, 0, 0, 1, 1, 2, 3]) for i in range(n_items)}
    # ranked may include unknown ids (>= n_items) and duplicates
    ranked = [rng.randrange(n_items + 10) for _ in range(rng.randint(0, 25))]
    k = rng.randint(1, 30)
    return ranked, relevance, k


@pytest.mark.parametrize("seed", range(25))
def test_random_invariants(seed: int) -> None:
    rng = random.Random(seed)
    ranked, relevance, k = _random_case(rng)

    ndcg = ndcg_at_k(ranked, relevance, k)
    assert 0.0 <= ndcg <= 1.0 + 1e-12

    # precision * k == number of distinct relevant ids among the top-k slots
    seen: set[int] = set()
    hits = 0
    for item in ranked[:k]:
        if item not in seen:
            seen.add(item)
            hits += relevance.get(item, 0) >= 1
    assert precision_at_k(ranked, relevance, k) * k == pytest.approx(hits)

    for value in (
        precision_at_k(ranked, relevance, k),
        recall_at_k(ranked, relevance, k),
        average_precision_at_k(ranked, relevance, k),
        reciprocal_rank(ranked, relevance, k=k),
    ):
        assert 0.0 <= value <= 1.0

    # reciprocal rank never exceeds precision at the first hit's rank (<= 1)
    # and AP is 0 exactly when there is no hit in the top k
    assert (average_precision_at_k(ranked, relevance, k) == 0.0) == (hits == 0)
    assert (reciprocal_rank(ranked, relevance, k=k) == 0.0) == (hits == 0)


@pytest.mark.parametrize("seed", range(25))
def test_ideal_ordering_scores_one(seed: int) -> None:
    rng = random.Random(1000 + seed)
    _, relevance, k = _random_case(rng)
    ideal = sorted(relevance, key=lambda item: relevance[item], reverse=True)
    if any(grade > 0 for grade in relevance.values()):
        assert ndcg_at_k(ideal, relevance, k) == pytest.approx(1.0)
        assert reciprocal_rank(ideal, relevance) == 1.0
        assert average_precision_at_k(ideal, relevance, k) == pytest.approx(1.0)
        n_relevant = sum(grade >= 1 for grade in relevance.values())
        assert recall_at_k(ideal, relevance, k) == pytest.approx(min(k, n_relevant) / n_relevant)
    else:
        assert ndcg_at_k(ideal, relevance, k) == 0.0


@pytest.mark.parametrize("seed", range(10))
def test_dcg_matches_direct_formula(seed: int) -> None:
    rng = random.Random(2000 + seed)
    gains = [rng.randint(0, 4) for _ in range(rng.randint(0, 15))]
    k = rng.randint(1, 20)
    expected = sum((2**g - 1) / math.log2(rank + 1) for rank, g in enumerate(gains[:k], start=1))
    assert dcg_at_k(gains, k) == pytest.approx(expected)


# --------------------------------------------------------------------------- #
# hierarchical-retrieval metrics
# --------------------------------------------------------------------------- #


def test_category_recall() -> None:
    assert category_recall({"shoes", "bags"}, "bags") == 1.0
    assert category_recall({"shoes", "bags"}, "hats") == 0.0
    assert category_recall([], "hats") == 0.0
    assert category_recall((1, 2, 3), 2) == 1.0


def test_searched_fraction() -> None:
    assert searched_fraction(250, 1000) == 0.25
    assert searched_fraction(0, 10) == 0.0
    assert searched_fraction(10, 10) == 1.0
    with pytest.raises(ValueError, match="catalogue_size"):
        searched_fraction(0, 0)
    with pytest.raises(ValueError, match="catalogue_size"):
        searched_fraction(1, -5)
    with pytest.raises(ValueError, match="searched_count"):
        searched_fraction(-1, 10)
    with pytest.raises(ValueError, match="searched_count"):
        searched_fraction(11, 10)


# --------------------------------------------------------------------------- #
# aggregation
# --------------------------------------------------------------------------- #


def test_summarize_means() -> None:
    per_query = [
        {"ndcg@10": 1.0, "recall@10": 0.5},
        {"ndcg@10": 0.5, "recall@10": 0.0},
        {"ndcg@10": 0.0, "recall@10": 1.0},
    ]
    # ndcg: (1 + 0.5 + 0) / 3 = 0.5; recall: (0.5 + 0 + 1) / 3 = 0.5
    result = summarize(per_query)
    assert result == {"ndcg@10": pytest.approx(0.5), "recall@10": pytest.approx(0.5)}
    assert list(result) == ["ndcg@10", "recall@10"]
    assert all(type(v) is float for v in result.values())


def test_summarize_single_query_and_key_order() -> None:
    assert summarize([{"b": 2.0, "a": 1.0}]) == {"b": 2.0, "a": 1.0}
    # key order of later rows does not matter
    assert summarize([{"a": 1.0, "b": 3.0}, {"b": 1.0, "a": 0.0}]) == {
        "a": 0.5,
        "b": 2.0,
    }


def test_summarize_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="mismatched"):
        summarize([{"a": 1.0}, {"b": 1.0}])
    with pytest.raises(ValueError, match="mismatched"):
        summarize([{"a": 1.0, "b": 2.0}, {"a": 1.0}])
    with pytest.raises(ValueError, match="mismatched"):
        summarize([{"a": 1.0}, {"a": 1.0, "b": 2.0}])


def test_latency_percentiles_hand_computed() -> None:
    # sorted [10, 20, 30, 40], linear interpolation over positions 0..3:
    #   p50 -> position 1.5  -> 20 + 0.5 * 10  = 25
    #   p95 -> position 2.85 -> 30 + 0.85 * 10 = 38.5
    #   mean = 100 / 4 = 25
    result = latency_percentiles([40.0, 10.0, 30.0, 20.0])
    assert result == {
        "latency_ms_p50": pytest.approx(25.0),
        "latency_ms_p95": pytest.approx(38.5),
        "latency_ms_mean": pytest.approx(25.0),
    }
    assert all(type(v) is float for v in result.values())


def test_latency_percentiles_single_value_and_numpy_input() -> None:
    assert latency_percentiles([7.0]) == {
        "latency_ms_p50": 7.0,
        "latency_ms_p95": 7.0,
        "latency_ms_mean": 7.0,
    }
    values = np.arange(1, 101, dtype=np.float64)  # 1..100
    # p95 position = 0.95 * 99 = 94.05 -> 95 + 0.05 * 1 = 95.05
    result = latency_percentiles(values.tolist())
    assert result["latency_ms_p95"] == pytest.approx(95.05)
    assert result["latency_ms_p50"] == pytest.approx(50.5)
    assert result["latency_ms_mean"] == pytest.approx(50.5)


def test_latency_percentiles_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        latency_percentiles([])
    with pytest.raises(ValueError, match="finite"):
        latency_percentiles([1.0, float("nan")])
    with pytest.raises(ValueError, match="finite"):
        latency_percentiles([1.0, -2.0])
