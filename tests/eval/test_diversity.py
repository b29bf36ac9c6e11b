"""ILD, category diversity, coverage and novelty on hand-made lists with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.diversity import CoverageTracker, novelty, purchase_popularity
from rag.diversity import category_ild, distinct_path_share, ild, tree_distance


def test_ild_of_hand_made_lists() -> None:
    same = np.array([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0]])
    assert ild(same) == pytest.approx(0.0)
    orthogonal = np.eye(3)
    assert ild(orthogonal) == pytest.approx(1.0)
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert ild(opposite) == pytest.approx(2.0)
    # Three vectors at 0°, 90°, 180°: distances 1, 2, 1 → mean 4/3.
    mixed = np.array([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]])
    assert ild(mixed) == pytest.approx(4 / 3)
    assert ild(mixed, k=2) == pytest.approx(1.0)
    assert ild(mixed[:1]) == 0.0


def test_ild_agrees_with_a_brute_force_loop() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 16))
    pairs = [1 - x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j]) for i in range(12) for j in range(i + 1, 12)]
    assert ild(x) == pytest.approx(float(np.mean(pairs)))


def test_ild_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        ild(np.ones(3))
    with pytest.raises(ValueError, match="zero vector"):
        ild(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="positive"):
        ild(np.eye(2), k=0)


def test_category_diversity_on_the_tree() -> None:
    shirts = ("Apparel", "Topwear", "Shirts")
    tees = ("Apparel", "Topwear", "Tshirts")
    jeans = ("Apparel", "Bottomwear", "Jeans")
    watch = ("Accessories", "Watches", "Watches")
    assert tree_distance(shirts, shirts) == 0.0
    assert tree_distance(shirts, tees) == pytest.approx(1 / 3)
    assert tree_distance(shirts, jeans) == pytest.approx(2 / 3)
    assert tree_distance(shirts, watch) == 1.0
    assert category_ild([shirts, shirts]) == 0.0
    assert category_ild([shirts, tees, watch]) == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert distinct_path_share([shirts, shirts, tees, watch]) == 0.75
    assert distinct_path_share([shirts, shirts, tees, watch], k=2) == 0.5


def test_novelty_and_coverage() -> None:
    popularity = {"a": 0.5, "b": 0.25}
    assert novelty(["a", "b"], popularity) == pytest.approx(1.5)
    assert novelty(["c"], popularity, floor=1 / 1024) == pytest.approx(10.0)
    assert novelty([], popularity) == 0.0
    cov = CoverageTracker(n_products=10, n_categories=4)
    cov.add(["p1", "p2", "p3"], [("A",), ("A",), ("B",)])
    cov.add(["p3", "p4"], [("B",), ("C",)])
    assert (cov.product_coverage, cov.category_coverage, cov.lists) == (0.4, 0.75, 2)
    with pytest.raises(ValueError, match="positive"):
        CoverageTracker(0, 1)
    assert math.isclose(novelty(["a"] * 3, popularity), 1.0)


def test_purchase_popularity_is_a_smoothed_distribution_over_every_item() -> None:
    popularity = purchase_popularity(["a", "a", "a", "b"], ["a", "b", "c", "d"])
    assert sum(popularity.values()) == pytest.approx(1.0)
    assert popularity["a"] > popularity["b"] > popularity["c"] == popularity["d"] > 0
    # an item bought but missing from the catalogue list still counts, so the shares stay a distribution
    assert set(purchase_popularity(["x"], ["a"])) == {"a", "x"}
    assert novelty(["c"], popularity) > novelty(["a"], popularity)
