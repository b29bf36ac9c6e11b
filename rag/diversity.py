"""Diversity, in one place: how diverse a list is (ILD), how to make it more so (MMR), and how much to ask for.

- **ILD@K on embeddings**: the mean pairwise distance ``1 − cos(a, b)`` over the first K items
  (image or text vectors; vectors are normalised here, so any scale works). A list of fewer
  than two items has no pairs; its ILD is 0 by definition.
- **ILD@K on the category path**: the share of distinct full paths among the K items, and the
  mean pairwise *tree distance* (the levels below the deepest common ancestor, over the path
  depth: 0 for the same category, 1 for different top-level categories).
- **MMR** (Carbonell & Goldstein, 1998): each step picks the candidate with the best
  ``λ · relevance − (1 − λ) · max similarity to those already picked``; λ = 1 keeps the
  relevance order. Relevance is min-max scaled to [0, 1] so that it weighs against cosine
  similarity on the same scale; ties go to the earlier candidate. Qdrant's own MMR query serves
  the same purpose server-side; Tandem runs this one over the pool it already holds (Qdrant Edge
  has no MMR query), so both stores behave alike.
- :class:`DiversityCalibration` maps a buyer-facing ``diversity`` in [0, 1] to the knob setting
  that reaches that much of the measured ILD range at the least NDCG cost. It is fitted by
  ``tandem experiment diversity`` and stored as JSON; without one, Tandem falls back to MMR with
  λ = 1 − diversity and says the mapping is uncalibrated.

Example:
    >>> import numpy as np
    >>> round(ild(np.array([[1.0, 0.0], [0.0, 1.0]])), 3)
    1.0
    >>> tree_distance(("Apparel", "Topwear", "Shirts"), ("Apparel", "Bottomwear", "Jeans"))
    0.6666666666666666
    >>> vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    >>> mmr_order([0.9, 0.89, 0.5], vectors, lam=0.3)
    [0, 2, 1]
    >>> DiversityCalibration.default().settings_for(0.25)
    {'knob': 'mmr_lambda', 'value': 0.75, 'calibrated': False}
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CalibrationPoint",
    "CalibrationPool",
    "DiversityCalibration",
    "ListDiversity",
    "category_ild",
    "distinct_path_share",
    "ild",
    "list_diversity",
    "mmr_order",
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


@dataclass(frozen=True)
class ListDiversity:
    """The diversity one list reached (None where vectors were not available)."""

    ild_image: float | None
    ild_text: float | None
    ild_category: float
    distinct_categories: float


def _ild_of(ids: Sequence[str], vectors: Mapping[str, np.ndarray]) -> float | None:
    rows = [vectors[i] for i in ids if i in vectors]
    if len(rows) < len(ids) or len(rows) < 2:
        return None if len(rows) < len(ids) else 0.0
    return round(ild(np.vstack(rows)), 4)


def list_diversity(
    ids: Sequence[str],
    paths: Sequence[Sequence[str]],
    *,
    image: Mapping[str, np.ndarray] | None = None,
    text: Mapping[str, np.ndarray] | None = None,
) -> ListDiversity:
    return ListDiversity(
        ild_image=_ild_of(ids, image) if image is not None else None,
        ild_text=_ild_of(ids, text) if text is not None else None,
        ild_category=round(category_ild(paths), 4),
        distinct_categories=round(distinct_path_share(paths), 4),
    )


@dataclass(frozen=True)
class CalibrationPoint:
    """One measured knob setting: its mean NDCG@10 and ILD@10 over the experiment's requests."""

    knob: str
    value: float
    ndcg: float
    ild: float


@dataclass(frozen=True)
class CalibrationPool:
    """The ranker's candidates in the calibration's sweep: how many, and how many from explored categories."""

    candidates: int
    explore: int


@dataclass(frozen=True)
class DiversityCalibration:
    """Target diversity → knob setting, from measured (knob, value, NDCG, ILD) points."""

    points: list[CalibrationPoint] = field(default_factory=list)
    source: str = "uncalibrated"
    pool: CalibrationPool | None = None  # the candidate pools the points were measured on

    @classmethod
    def default(cls) -> DiversityCalibration:
        return cls()

    @property
    def calibrated(self) -> bool:
        return bool(self.points)

    def settings_for(self, diversity: float, knobs: Collection[str] | None = None) -> dict[str, Any]:
        """The setting (among ``knobs``, default all) that reaches ``diversity`` of the ILD range with the best NDCG."""
        if not 0.0 <= diversity <= 1.0:
            raise ValueError(f"diversity must be within [0, 1], got {diversity}")
        points = [p for p in self.points if knobs is None or p.knob in knobs]
        if not points:
            return {"knob": "mmr_lambda", "value": round(1.0 - diversity, 4), "calibrated": False}
        low = min(p.ild for p in points)
        high = max(p.ild for p in points)
        target = low + diversity * (high - low)
        reaching = [p for p in points if p.ild >= target - 1e-9]
        best = max(reaching, key=lambda p: (p.ndcg, -p.ild))
        return {"knob": best.knob, "value": best.value, "calibrated": True, "expected_ild": round(best.ild, 4),
                "expected_ndcg": round(best.ndcg, 4)}  # fmt: skip

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"source": self.source, "points": [asdict(p) for p in self.points],
                "pool": asdict(self.pool) if self.pool is not None else None}  # fmt: skip
        path.write_text(json.dumps(body, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> DiversityCalibration:
        """The stored calibration, or the uncalibrated default when there is none."""
        if not path.is_file():
            return cls.default()
        body = json.loads(path.read_text(encoding="utf-8"))
        pool = body.get("pool")
        return cls([CalibrationPoint(**p) for p in body["points"]], str(body.get("source", path)),
                   CalibrationPool(**pool) if pool else None)  # fmt: skip
