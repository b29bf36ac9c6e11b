"""What both retrieval benchmarks measure with: latency summaries, exact top-k, and a progress row.

:func:`latency_stats` is the ``{p50_ms, p95_ms, mean_ms, n}`` summary every timing in
``retrieval_bench.json`` is written as; :func:`top_k_indices` is the exact search the synthetic
benchmark (and :mod:`eval.bench_hierarchical`) measures HNSW against; :class:`ProgressRow`
lets a benchmark report its phases on an optional rich progress display.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from eval.metrics import latency_percentiles

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["ProgressRow", "latency_stats", "top_k_indices"]


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    """``{"p50_ms", "p95_ms", "mean_ms", "n"}`` of a list of latencies in milliseconds."""
    pct = latency_percentiles(latencies_ms)
    return {
        "p50_ms": round(pct["latency_ms_p50"], 4),
        "p95_ms": round(pct["latency_ms_p95"], 4),
        "mean_ms": round(pct["latency_ms_mean"], 4),
        "n": len(latencies_ms),
    }


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores``, best first (argpartition, then a sort of the k)."""
    if k >= scores.shape[0]:
        return np.argsort(-scores)
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


class ProgressRow:
    """One row of an optional rich :class:`~rich.progress.Progress` (every call is a no-op without one)."""

    def __init__(self, progress: Progress | None, description: str, total: float = 1) -> None:
        self._progress = progress
        self._id: TaskID | None = None
        if progress is not None:
            self._id = progress.add_task(description, total=total)

    def phase(self, description: str, total: float = 1) -> None:
        """Start a new phase on the same row: new description, new total, nothing completed."""
        if self._progress is not None and self._id is not None:
            self._progress.reset(self._id, total=total, completed=0, description=description)

    def advance(self, n: float = 1) -> None:
        if self._progress is not None and self._id is not None:
            self._progress.advance(self._id, n)

    def done(self, description: str) -> None:
        if self._progress is not None and self._id is not None:
            total = next(t.total for t in self._progress.tasks if t.id == self._id)
            self._progress.update(self._id, description=description, completed=total)
            self._progress.stop_task(self._id)
