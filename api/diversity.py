"""Diversity knobs on a recommendation: MMR over the pool, a target diversity mapped to knob settings, ILD reports.

- :func:`list_diversity` measures what a list reached: ILD@K on image and text vectors, the
  category tree distance and the share of distinct category paths.
- :class:`DiversityCalibration` maps a buyer-facing ``diversity`` in [0, 1] to the knob
  setting that reaches that much of the measured ILD range at the least NDCG cost. It is
  fitted from ``tandem experiment diversity`` and stored as JSON; without one, Tandem falls
  back to MMR with λ = 1 − diversity and says the mapping is uncalibrated.

Example:
    >>> calibration = DiversityCalibration.default()
    >>> calibration.settings_for(0.25)
    {'knob': 'mmr_lambda', 'value': 0.75, 'calibrated': False}
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval.diversity import category_ild, distinct_path_share, ild

__all__ = ["CalibrationPoint", "CalibrationPool", "DiversityCalibration", "ListDiversity", "list_diversity"]


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
