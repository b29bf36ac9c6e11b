"""Search many queries at once: one encoder call per modality for the whole batch, then one search each.

This is the function a :class:`~retrieval.batching.MicroBatcher` runs for a service, so
concurrent buyers share encoder batches.

Example:
    >>> results = search_batch(hierarchical, [BatchQuery(SearchQuery(text="red kurta"), k=5)])  # doctest: +SKIP
    >>> results[0].hits[0].title  # doctest: +SKIP
    'Diva Women Red Kurta'
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from retrieval.errors import RetrievalError
from retrieval.hierarchical import HierarchicalRetriever, SearchMode, SearchResult
from retrieval.search import SearchQuery
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR

__all__ = ["BatchQuery", "search_batch"]


@dataclass(frozen=True, slots=True)
class BatchQuery:
    """One query of a batch with its own k and mode."""

    query: SearchQuery
    k: int = 10
    mode: SearchMode = "hierarchical"
    explore: int = 0  # nearby categories level 1 left out, adding their best products after the k hits


def search_batch(retriever: HierarchicalRetriever, queries: list[BatchQuery]) -> list[SearchResult | RetrievalError]:
    """Answer every query; a query that fails gets its error in its slot, the others still get results.

    Each result's ``timing_ms`` has ``encode`` (the batch's encoder time, shared by its members),
    ``search`` (this query's own search) and ``batch_size``.
    """
    results: list[SearchResult | RetrievalError | None] = [None] * len(queries)
    text_rows: list[int] = []
    image_rows: list[int] = []
    for i, bq in enumerate(queries):
        try:
            bq.query.validate()
        except RetrievalError as exc:
            results[i] = exc
            continue
        if bq.query.text is not None and bq.query.text.strip():
            text_rows.append(i)
        if bq.query.image is not None:
            image_rows.append(i)
    inner = retriever.retriever
    t0 = time.perf_counter()
    vectors: list[dict[str, np.ndarray]] = [{} for _ in queries]
    try:
        if text_rows:
            texts = [(queries[i].query.text or "").strip() for i in text_rows]
            for i, vec in zip(text_rows, inner.text_encoder.encode(texts), strict=True):
                vectors[i][TEXT_VECTOR] = vec
        if image_rows:
            images = [queries[i].query.image for i in image_rows]
            encoded = inner.image_encoder.encode([im for im in images if im is not None])
            for i, vec in zip(image_rows, encoded, strict=True):
                vectors[i][IMAGE_VECTOR] = vec
    except RetrievalError as exc:
        return [r if r is not None else exc for r in results]
    encode_ms = (time.perf_counter() - t0) * 1000
    for i, bq in enumerate(queries):
        if results[i] is not None:
            continue
        try:
            result = retriever.search_vectors(vectors[i], k=bq.k, mode=bq.mode, filter=bq.query.filter)
            result.hits = inner.exact_first(bq.query, result.hits, bq.k)
            if bq.explore > 0:
                retriever.add_explored(vectors[i], result, bq.explore, filter=bq.query.filter)
        except RetrievalError as exc:
            results[i] = exc
            continue
        result.timing_ms = {"encode": encode_ms, **result.timing_ms, "batch_size": float(len(queries))}
        results[i] = result
    return [r for r in results if r is not None]
