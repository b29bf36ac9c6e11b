"""List diversity against hand-worked lists and brute force: ILD, the category tree distance, and MMR (λ = 1, λ = 0)."""

from __future__ import annotations

import numpy as np
import pytest

from rag.diversity import category_ild, distinct_path_share, ild, mmr_order, tree_distance


def brute_force(rel: np.ndarray, x: np.ndarray, lam: float, k: int) -> list[int]:
    rel = (rel - rel.min()) / (rel.max() - rel.min())
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    chosen: list[int] = []
    while len(chosen) < k:
        best, best_score = -1, -np.inf
        for i in range(len(rel)):
            if i in chosen:
                continue
            penalty = max((float(x[i] @ x[j]) for j in chosen), default=0.0)
            score = lam * rel[i] - (1 - lam) * penalty
            if score > best_score:
                best, best_score = i, score
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
def test_mmr_matches_its_definition(lam: float) -> None:
    rng = np.random.default_rng(int(lam * 10))
    x = rng.normal(size=(30, 8))
    rel = rng.random(30)
    assert mmr_order(rel, x, lam=lam, k=10) == brute_force(rel, x, lam, 10)


def test_lambda_one_keeps_relevance_order_and_lower_lambda_raises_ild() -> None:
    rng = np.random.default_rng(1)
    centre = rng.normal(size=16)
    x = np.vstack([centre + 0.1 * rng.normal(size=(20, 16)), rng.normal(size=(20, 16))])  # 20 near-duplicates first
    rel = np.linspace(1.0, 0.5, 40)
    assert mmr_order(rel, x, lam=1.0, k=10) == list(range(10))
    ilds = [ild(x[mmr_order(rel, x, lam=lam, k=10)]) for lam in (1.0, 0.7, 0.4, 0.0)]
    assert ilds == sorted(ilds) and ilds[-1] > 2 * ilds[0]


def test_mmr_limits_and_bad_input() -> None:
    x = np.eye(3)
    assert mmr_order([0.5, 0.5, 0.5], x, lam=0.5) == [0, 1, 2]  # ties: the earlier candidate
    assert mmr_order([], np.zeros((0, 3)), lam=0.5) == []
    with pytest.raises(ValueError, match="within"):
        mmr_order([1.0], x[:1], lam=1.5)
    with pytest.raises(ValueError, match="vectors"):
        mmr_order([1.0, 0.5], x, lam=0.5)


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
