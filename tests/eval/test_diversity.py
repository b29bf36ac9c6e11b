"""Coverage and novelty across lists, and purchase popularity, on hand-made lists with known answers."""

from __future__ import annotations

import math

import pytest

from eval.diversity import CoverageTracker, novelty, purchase_popularity


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
