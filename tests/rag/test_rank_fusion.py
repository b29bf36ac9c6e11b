import random

import pytest

from rag.rank_fusion import RRF_K, fuse_rankings


def brute_force(ranked: list[str], retrieval: list[str], weight: float) -> list[str]:
    scores = {pid: weight / (RRF_K + 1 + ranked.index(pid)) + (1 - weight) / (RRF_K + 1 + i)
              for i, pid in enumerate(retrieval)}  # fmt: skip
    return sorted(retrieval, key=lambda pid: (-scores[pid], retrieval.index(pid)))


def test_the_ends_of_the_weight_are_each_list_alone() -> None:
    retrieval = [f"p{i}" for i in range(20)]
    ranked = list(reversed(retrieval))
    assert fuse_rankings(ranked, retrieval, weight=1.0) == ranked
    assert fuse_rankings(ranked, retrieval, weight=0.0) == retrieval


@pytest.mark.parametrize("weight", [0.25, 0.5, 0.8])
def test_fusion_matches_the_formula_on_random_permutations(weight: float) -> None:
    rng = random.Random(7)
    for _ in range(50):
        retrieval = [f"p{i}" for i in range(20)]
        ranked = rng.sample(retrieval, len(retrieval))
        fused = fuse_rankings(ranked, retrieval, weight=weight)
        assert fused == brute_force(ranked, retrieval, weight)
        assert sorted(fused) == sorted(retrieval)


def test_a_weight_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError, match="weight"):
        fuse_rankings(["a"], ["a"], weight=1.5)
