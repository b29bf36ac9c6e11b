"""MMR against a brute-force reading of its definition, and its limits (λ = 1, λ = 0)."""

from __future__ import annotations

import numpy as np
import pytest

from rag.diversity import ild, mmr_order


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
