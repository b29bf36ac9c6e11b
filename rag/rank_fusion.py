"""Reciprocal rank fusion of the LLM ranker's order with retrieval order.

A 135M ranker reads its candidates, but not yet as well as retrieval scores them; fusing the two
orders (Cormack et al., SIGIR 2009) keeps what each knows. ``weight`` is the ranker's share: 1.0 is
the ranker's order alone, 0.0 retrieval order alone.

Example:
    >>> fuse_rankings(["C", "A", "B"], ["A", "B", "C"], weight=0.5)
    ['A', 'C', 'B']
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["RRF_K", "fuse_rankings"]

RRF_K = 60  # the constant of the original paper: flattens the top so one list cannot dominate


def fuse_rankings(ranked: Sequence[str], retrieval: Sequence[str], *, weight: float, k: int = RRF_K) -> list[str]:
    """Order ``retrieval``'s ids by weighted reciprocal rank over both lists; ties keep retrieval order.

    ``ranked`` is the validated ranking (a permutation of ``retrieval``); ids missing from it rank last there.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be within [0, 1], got {weight}")
    position = {pid: i for i, pid in enumerate(ranked)}
    last = len(retrieval)

    def score(item: tuple[int, str]) -> float:
        i, pid = item
        return weight / (k + 1 + position.get(pid, last)) + (1.0 - weight) / (k + 1 + i)

    fused = sorted(enumerate(retrieval), key=lambda item: (-score(item), item[0]))
    return [pid for _, pid in fused]
