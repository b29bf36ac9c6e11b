"""Check a submitted ranking against the candidates: unknown and duplicate ids dropped and counted, gaps filled.

Example:
    >>> checked = validate_ranking(["B2", "X9", "B2"], ["A1", "B2", "C3"])
    >>> checked.ranking, checked.hallucinated, checked.duplicates
    (['B2', 'A1', 'C3'], 1, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ValidatedRanking", "validate_ranking"]


@dataclass(frozen=True)
class ValidatedRanking:
    """A full ranking of the candidates, and what validation had to fix."""

    ranking: list[str]
    returned: int
    hallucinated: int
    duplicates: int
    filled: int


def validate_ranking(ids: Sequence[str] | None, candidates: Sequence[str]) -> ValidatedRanking:
    """Keep known, first-seen ids in the model's order, then fill with the rest in retrieval order."""
    allowed = set(candidates)
    seen: set[str] = set()
    kept: list[str] = []
    hallucinated = duplicates = 0
    for raw in ids or []:
        pid = str(raw)
        if pid not in allowed:
            hallucinated += 1
        elif pid in seen:
            duplicates += 1
        else:
            seen.add(pid)
            kept.append(pid)
    rest = [c for c in candidates if c not in seen]
    return ValidatedRanking(kept + rest, len(ids or []), hallucinated, duplicates, len(rest))
