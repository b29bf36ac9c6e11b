"""Maximal marginal relevance (Carbonell & Goldstein, 1998): a deterministic diversifier over a candidate pool.

Each step picks the candidate with the best ``λ · relevance − (1 − λ) · max similarity to
those already picked``; λ = 1 keeps the relevance order, λ = 0 picks the most different item
each time. Relevance is the retrieval score (min-max scaled to [0, 1] so that it weighs
against cosine similarity on the same scale); ties go to the earlier candidate.

Qdrant's own MMR query serves the same purpose server-side; Tandem runs this one over the
pool it already holds (Qdrant Edge has no MMR query), so both stores behave alike.

Example:
    >>> import numpy as np
    >>> vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    >>> mmr_order([0.9, 0.89, 0.5], vectors, lam=1.0)
    [0, 1, 2]
    >>> mmr_order([0.9, 0.89, 0.5], vectors, lam=0.3)
    [0, 2, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["mmr_order"]


def mmr_order(relevance: Sequence[float], vectors: np.ndarray, *, lam: float, k: int | None = None) -> list[int]:
    """Indices of the first ``k`` candidates (all when None) in MMR order."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"λ must be within [0, 1], got {lam}")
    n = len(relevance)
    x = np.asarray(vectors, dtype=np.float64)
    if x.shape[0] != n:
        raise ValueError(f"{n} relevance scores but {x.shape[0]} vectors")
    if n == 0:
        return []
    k = n if k is None else min(k, n)
    rel = np.asarray(relevance, dtype=np.float64)
    spread = rel.max() - rel.min()
    rel = (rel - rel.min()) / spread if spread > 0 else np.ones(n)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms == 0, 1.0, norms)
    sims = x @ x.T
    chosen: list[int] = []
    max_sim = np.full(n, -np.inf)
    left = np.ones(n, dtype=bool)
    for _ in range(k):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        score = lam * rel - (1.0 - lam) * penalty
        score[~left] = -np.inf
        best = int(np.argmax(score))  # the first of equal scores: the earlier candidate
        chosen.append(best)
        left[best] = False
        max_sim = np.maximum(max_sim, sims[best])
    return chosen
