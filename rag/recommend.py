"""The recommendation use case: one buyer query → a product list, diversified on request, with the diversity it reached.

One :class:`Recommender` serves the REST route, ``tandem search`` and the chat's diversity
report: it searches a pool, re-ranks the pool with MMR when the caller asks for diversity
(``mmr_lambda`` directly, or a target ``diversity`` that the calibration maps to λ), keeps the
first ``top_k`` and measures the list it returns.

Search and vector look-up are injected: the HTTP service passes its micro-batcher, the CLI a
plain retriever call.

Example:
    >>> recommender = Recommender(search, vectors=store.vectors)  # doctest: +SKIP
    >>> rec = await recommender.recommend(SearchQuery(text="red kurta"), top_k=5, diversity=0.5)  # doctest: +SKIP
    >>> rec.settings  # doctest: +SKIP
    {'diversity': 0.5, 'mmr_lambda': 0.5, 'calibrated': False, 'pool': 20}
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag.diversity import DiversityCalibration, ListDiversity, list_diversity, mmr_order
from rag.errors import InvalidTurnError
from retrieval.hierarchical import SearchMode, SearchResult
from retrieval.search import SearchHit, SearchQuery
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR

__all__ = ["Recommendation", "Recommender", "SearchFn", "VectorLookup", "measure_list"]

SearchFn = Callable[[SearchQuery, int, SearchMode], Awaitable[SearchResult]]
VectorLookup = Callable[[Sequence[str], str], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Recommendation:
    """The products to show, the search that found them, the diversity the list reached and the knobs applied."""

    hits: list[SearchHit]
    result: SearchResult
    diversity: ListDiversity
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # search, re-ranking and measuring, wall time


class Recommender:
    """Search → optional MMR over the pool → the first ``top_k``, measured.

    Example:
        >>> rec = await Recommender(search).recommend(SearchQuery(text="navy shirt"), top_k=3)  # doctest: +SKIP
        >>> [h.product_id for h in rec.hits]  # doctest: +SKIP
        ['15970', '39386', '21379']
    """

    def __init__(
        self,
        search: SearchFn,
        *,
        vectors: VectorLookup | None = None,
        calibration: DiversityCalibration | None = None,
    ) -> None:
        self.search = search
        self.vectors = vectors
        self.calibration = calibration or DiversityCalibration.default()

    def mmr_setting(self, mmr_lambda: float | None, diversity: float | None) -> tuple[float | None, dict[str, Any]]:
        """MMR's λ for this request (None: relevance order), and the settings to report."""
        if mmr_lambda is not None and diversity is not None:
            raise InvalidTurnError("give mmr_lambda or diversity, not both")
        if diversity is not None:
            try:
                chosen = self.calibration.settings_for(diversity, knobs={"mmr_lambda"})
            except ValueError as exc:
                raise InvalidTurnError(str(exc)) from exc
            return float(chosen["value"]), {"diversity": diversity, "mmr_lambda": chosen["value"],
                                            "calibrated": chosen["calibrated"]}  # fmt: skip
        if mmr_lambda is not None:
            return mmr_lambda, {"mmr_lambda": mmr_lambda}
        return None, {}

    async def recommend(
        self,
        query: SearchQuery,
        *,
        top_k: int,
        mode: SearchMode = "hierarchical",
        pool: int | None = None,
        mmr_lambda: float | None = None,
        diversity: float | None = None,
    ) -> Recommendation:
        """The first ``top_k`` products for ``query``; a pool of 4 × ``top_k`` is re-ranked when diversity is asked."""
        t0 = time.perf_counter()
        lam, settings = self.mmr_setting(mmr_lambda, diversity)
        pool = pool or (4 * top_k if lam is not None else top_k)
        result = await self.search(query, pool, mode)
        hits = list(result.hits)
        image_vectors = await self.lookup([h.product_id for h in hits], IMAGE_VECTOR)
        if lam is not None and len(hits) > 1 and len(image_vectors) == len(hits):
            matrix = np.vstack([image_vectors[h.product_id] for h in hits])
            hits = [hits[i] for i in mmr_order([h.score for h in hits], matrix, lam=lam, k=top_k)]
        hits = hits[:top_k]
        reached = await self.measure([h.product_id for h in hits], [h.category for h in hits], image=image_vectors)
        return Recommendation(hits, result, reached, {**settings, "pool": pool}, time.perf_counter() - t0)

    async def measure(
        self, ids: Sequence[str], paths: Sequence[Sequence[str]], *, image: dict[str, np.ndarray] | None = None
    ) -> ListDiversity:
        """The diversity a shown list reached (see :func:`measure_list`)."""
        return await measure_list(self.vectors, ids, paths, image=image)

    async def lookup(self, ids: Sequence[str], using: str) -> dict[str, np.ndarray]:
        return await _lookup(self.vectors, ids, using)


async def _lookup(vectors: VectorLookup | None, ids: Sequence[str], using: str) -> dict[str, np.ndarray]:
    if vectors is None or not ids:
        return {}
    # Store reads block: off the event loop, as every other request keeps being served.
    return await asyncio.to_thread(vectors, list(ids), using)


async def measure_list(
    vectors: VectorLookup | None,
    ids: Sequence[str],
    paths: Sequence[Sequence[str]],
    *,
    image: dict[str, np.ndarray] | None = None,
) -> ListDiversity:
    """The diversity a shown list reached: ILD on image and text vectors (when stored) and on category paths.

    ``image`` holds vectors already looked up (a superset of ``ids`` will do); without it, and
    without a vector store, only the category measures are reported.
    """
    if image is None:
        if vectors is None or not ids:
            return list_diversity(ids, paths)
        image = await _lookup(vectors, ids, IMAGE_VECTOR)
    text = await _lookup(vectors, ids, TEXT_VECTOR)
    return list_diversity(ids, paths, image=image, text=text)
