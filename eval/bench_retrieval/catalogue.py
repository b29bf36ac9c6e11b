"""The real pipeline on the real catalogue: indexing throughput, then query latency end to end.

:func:`bench_catalogue` indexes the configured catalogue through
:func:`retrieval.indexer.build_index` into a throw-away Qdrant Edge index under
``TANDEM_HOME/bench`` (the user's own index is never touched) and times text queries and
photo queries (decode + encode + search) through :class:`retrieval.search.Retriever`, then
the store's search alone on precomputed vectors.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.bench_retrieval.measure import ProgressRow, latency_stats
from retrieval.catalogue import Catalogue, load_catalogue
from retrieval.edge_store import EdgeStore
from retrieval.images import read_image_file
from retrieval.indexer import build_index
from retrieval.search import Retriever, SearchQuery
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR

if TYPE_CHECKING:
    from rich.progress import Progress

    from api.settings import Settings
    from retrieval.encoders import ImageEncoder, TextEncoder
    from retrieval.indexer import IndexReport

    # Built by the caller (the CLI's composition root) when the catalogue benchmark needs them.
    Encoders = Callable[[], tuple[TextEncoder, ImageEncoder]]

__all__ = ["bench_catalogue"]

# Untimed queries before each timed pass (the warm-up reuses the first queries).
_WARMUP = 5


def _sample_queries(catalogue: Catalogue, queries: int, seed: int) -> tuple[list[str], list[Path]]:
    """Titles of random products (text queries) and photos of random products (photo queries), seeded."""
    rng = random.Random(seed)
    products = catalogue.products
    text_sample = rng.sample(products, min(queries, len(products)))
    with_image = [p for p in products if p.image_path is not None]
    image_sample = rng.sample(with_image, min(queries, len(with_image)))
    titles = [p.title for p in text_sample]
    return titles, [p.image_path for p in image_sample if p.image_path is not None]


def _time_text(retriever: Retriever, titles: Sequence[str], k: int, task: ProgressRow) -> list[float]:
    for title in titles[:_WARMUP]:
        retriever.search(SearchQuery(text=title), k=k)
    text_ms: list[float] = []
    for title in titles:
        t0 = time.perf_counter()
        retriever.search(SearchQuery(text=title), k=k)
        text_ms.append((time.perf_counter() - t0) * 1e3)
        task.advance()
    return text_ms


def _time_photos(
    retriever: Retriever, settings: Settings, image_paths: Sequence[Path], k: int, task: ProgressRow
) -> tuple[list[float], list[np.ndarray]]:
    """Decode + encode + search of each photo, timed together; also returns the image vectors."""

    def photo_query(path: Path) -> np.ndarray:
        img = read_image_file(path, settings.images)
        vec = retriever.encode(SearchQuery(image=img))[IMAGE_VECTOR]
        retriever.search_vectors({IMAGE_VECTOR: vec}, k=k)
        return vec

    for path in image_paths[:_WARMUP]:
        photo_query(path)
    image_ms: list[float] = []
    image_vectors: list[np.ndarray] = []
    for path in image_paths:
        t0 = time.perf_counter()
        image_vectors.append(photo_query(path))
        image_ms.append((time.perf_counter() - t0) * 1e3)
        task.advance()
    return image_ms, image_vectors


def _time_search_only(
    store: EdgeStore, text_vectors: np.ndarray, image_vectors: list[np.ndarray], k: int, task: ProgressRow
) -> list[float]:
    search_ms: list[float] = []
    for using, vectors in ((TEXT_VECTOR, list(text_vectors)), (IMAGE_VECTOR, image_vectors)):
        for vec in vectors:
            t0 = time.perf_counter()
            store.search(vec, using=using, k=k)
            search_ms.append((time.perf_counter() - t0) * 1e3)
            task.advance()
    return search_ms


def _index_and_time(
    settings: Settings,
    catalogue: Catalogue,
    store: EdgeStore,
    encoders: tuple[TextEncoder, ImageEncoder],
    sampling: tuple[int, int, int],
    progress: Progress | None,
) -> tuple[IndexReport, dict[str, list[float]]]:
    """Index ``catalogue`` into ``store``, then time text, photo and search-only queries.

    ``sampling`` is (queries, k, seed).
    """
    text_encoder, image_encoder = encoders
    queries, k, seed = sampling
    index_task = ProgressRow(progress, f"catalogue: indexing {len(catalogue):,} products", total=len(catalogue))
    report = build_index(
        catalogue, store, text_encoder, image_encoder, limits=settings.images, progress=index_task.advance
    )
    index_task.done(f"catalogue: indexed {report.indexed:,} products")

    retriever = Retriever(store, text_encoder, image_encoder)
    titles, image_paths = _sample_queries(catalogue, queries, seed)
    query_task = ProgressRow(progress, "catalogue: timing queries", total=2 * (len(titles) + len(image_paths)))
    text_ms = _time_text(retriever, titles, k, query_task)
    image_ms, image_vectors = _time_photos(retriever, settings, image_paths, k, query_task)
    search_ms = _time_search_only(store, text_encoder.encode(titles), image_vectors, k, query_task)
    query_task.done("catalogue: queries timed")
    return report, {"text": text_ms, "image": image_ms, "search": search_ms}


def bench_catalogue(
    settings: Settings,
    encoders: Encoders,
    limit: int | None,
    queries: int = 200,
    progress: Progress | None = None,
    *,
    k: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Index the real catalogue into a throw-away Edge index and time flat queries end to end.

    The index lives in a temporary folder under ``settings.home / "bench"`` and is removed
    afterwards: the user's main index is never touched. Text queries are titles of random
    products; photo queries decode a catalogue photo with
    :func:`~retrieval.images.read_image_file`, encode it and search (all three timed
    together). ``search_only`` times :meth:`VectorStore.search` alone with precomputed
    vectors (the text and image vectors of the same queries).
    """

    catalogue = load_catalogue(settings.catalogue.path, settings.catalogue.columns, limit=limit)
    if len(catalogue) == 0:
        raise ValueError(f"the catalogue in {settings.catalogue.path} has no valid product")
    load_task = ProgressRow(progress, "catalogue: loading encoders")
    text_encoder, image_encoder = encoders()
    load_task.done("catalogue: encoders loaded")

    bench_root = settings.home / "bench"
    bench_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="catalogue-", dir=bench_root))
    store = EdgeStore(tmp / "index", hnsw_ef=settings.qdrant.hnsw_ef)
    try:
        pair = (text_encoder, image_encoder)
        report, ms = _index_and_time(settings, catalogue, store, pair, (queries, k, seed), progress)
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)

    return {
        "catalogue": str(Path(settings.catalogue.path).resolve()),
        "limit": limit,
        "products": report.indexed,
        "failed": len(report.failed),
        "index_seconds": round(report.seconds, 2),
        "images_per_s": round(report.images_per_s, 2),
        "texts_per_s": round(report.texts_per_s, 2),
        "text_encoder": text_encoder.model_id,
        "image_encoder": image_encoder.model_id,
        "device": settings.encoders.device,
        "k": k,
        "text_query": latency_stats(ms["text"]),
        "image_query": latency_stats(ms["image"]) if ms["image"] else None,
        "search_only": latency_stats(ms["search"]),
    }
