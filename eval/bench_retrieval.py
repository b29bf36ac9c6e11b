"""Retrieval benchmarks: the real catalogue pipeline, and Qdrant Edge HNSW against NumPy brute force.

Two independent measurements, written together to ``eval/reports/`` by :func:`run`:

* :func:`bench_catalogue` — the real pipeline on the real catalogue: indexing
  throughput (images/s, texts/s) through :func:`retrieval.indexer.build_index` into a
  throw-away Qdrant Edge index under ``TANDEM_HOME/bench``, then end-to-end query
  latency through :class:`retrieval.search.Retriever` for text queries and photo
  queries (decode + encode + search), plus the store search alone.
* :func:`bench_vector_search` — **synthetic** vectors at growing sizes (10k, 100k, 1M):
  a fresh Qdrant Edge shard (HNSW) against exact NumPy search (``X @ q`` + ``argpartition``)
  on the same matrix, with HNSW's recall@k measured against the exact result.

Example:
    >>> from api.settings import Settings
    >>> results = run(Settings(), limit=2000, sizes=(10_000,))  # doctest: +SKIP
    >>> results["vector_search"][0]["speedup_p50"]  # doctest: +SKIP
    12.3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

from eval.metrics import latency_percentiles

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from api.settings import Settings

__all__ = [
    "DEFAULT_SIZES",
    "SYNTHETIC_NOTE",
    "bench_catalogue",
    "bench_vector_search",
    "latency_stats",
    "machine_info",
    "main",
    "run",
    "top_k_indices",
    "write_report",
]

DEFAULT_SIZES: tuple[int, ...] = (10_000, 100_000, 1_000_000)

# Per-dimension standard deviation of the noise around a cluster centre (centres have unit
# variance per dimension): a point's cosine to its centre is ~1/sqrt(1 + 0.7^2) = 0.82, and
# two points of one cluster have cosine ~0.67, whatever the dimension.
_CLUSTER_NOISE = 0.7
# Relative size of a query's perturbation of its source vector: cosine(query, source) ~ 0.95.
_QUERY_NOISE = 0.33
_GEN_CHUNK = 50_000
# Untimed queries before each timed pass (the catalogue warm-up reuses its first queries).
_WARMUP = 5
# The synthetic benchmark warms up with its own queries, distinct from the timed ones, so a
# timed query never finds its own graph path already in cache.
_VECTOR_WARMUP = 20

SYNTHETIC_NOTE = (
    "Synthetic data: seeded random unit vectors, not catalogue embeddings. By default a mixture of "
    "random clusters (Gaussian noise around random centres, normalised), since real embeddings are "
    "clustered; queries are random perturbations of stored vectors (cosine ~0.95 to their source)."
)


# --------------------------------------------------------------------------- #
# Machine
# --------------------------------------------------------------------------- #


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """What the benchmark ran on: CPU, cores, RAM, versions, GPU (``"none"`` without CUDA), and the load average.

    Importing torch to ask for CUDA costs a few seconds the first time in a process.
    """
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:  # pragma: no cover - torch is a hard dependency
        gpu = "none"
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count() or 0,
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "qdrant_edge_py": _version("qdrant-edge-py"),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "gpu": gpu,
        # Other work on the machine skews every timing: the load when the benchmark started.
        "load_average_1_5_15m": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    """``{"p50_ms", "p95_ms", "mean_ms", "n"}`` of a list of latencies in milliseconds."""
    pct = latency_percentiles(latencies_ms)
    return {
        "p50_ms": round(pct["latency_ms_p50"], 4),
        "p95_ms": round(pct["latency_ms_p95"], 4),
        "mean_ms": round(pct["latency_ms_mean"], 4),
        "n": len(latencies_ms),
    }


class _Task:
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


def _synthetic_matrix(n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` seeded unit vectors (float32), generated in chunks to bound the temporaries."""
    x = np.empty((n, dim), dtype=np.float32)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) if clusters > 0 else None
    for start in range(0, n, _GEN_CHUNK):
        m = min(_GEN_CHUNK, n - start)
        chunk = rng.standard_normal((m, dim), dtype=np.float32)
        if centres is not None:
            chunk *= np.float32(_CLUSTER_NOISE)
            chunk += centres[rng.integers(0, clusters, m)]
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        x[start : start + m] = chunk
    return x


def _perturbed_queries(x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` queries: stored vectors plus a small random perturbation, renormalised (float32)."""
    n, dim = x.shape
    source = rng.choice(n, size=min(count, n), replace=False)
    noise = rng.standard_normal((len(source), dim), dtype=np.float32) * np.float32(_QUERY_NOISE / np.sqrt(dim))
    q = x[source] + noise
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.ascontiguousarray(q, dtype=np.float32)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores``, best first (argpartition, then a sort of the k)."""
    if k >= scores.shape[0]:
        return np.argsort(-scores)
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def _numpy_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-``k`` row indices of ``x`` by dot product with ``q``, best first."""
    return top_k_indices(x @ q, k)


# --------------------------------------------------------------------------- #
# Synthetic vector search: Qdrant Edge vs NumPy
# --------------------------------------------------------------------------- #


def _recall(found: Sequence[set[int]], exact: Sequence[set[int]]) -> float:
    return float(np.mean([len(f & e) / len(e) for f, e in zip(found, exact, strict=True)]))


def _edge_queries(
    shard: Any, qs: np.ndarray, warm: np.ndarray, k: int, params: Any, task: _Task
) -> tuple[list[float], list[set[int]]]:
    """Time each query of ``qs`` through a Qdrant Edge shard after running ``warm``; also return the ids found."""
    import qdrant_edge as qe

    for q in warm:
        shard.query(qe.QueryRequest(limit=k, query=qe.Query.Nearest(q.tolist()), params=params))
    times: list[float] = []
    ids: list[set[int]] = []
    for q in qs:
        t0 = time.perf_counter()
        hits = shard.query(qe.QueryRequest(limit=k, query=qe.Query.Nearest(q.tolist()), params=params))
        times.append((time.perf_counter() - t0) * 1e3)
        ids.append({int(h.id) for h in hits})
        task.advance()
    return times, ids


def bench_vector_search(
    sizes: Sequence[int] = DEFAULT_SIZES,
    dim: int = 384,
    queries: int = 200,
    k: int = 10,
    *,
    work_dir: Path | None = None,
    progress: Progress | None = None,
    seed: int = 0,
    clusters: int = 1000,
    m: int | None = 16,
    ef_construct: int | None = 64,
    quantization: bool = True,
    hnsw_ef: int | None = None,
    ef_sweep: Sequence[int] = (64, 128, 256),
    upsert_batch: int = 5000,
) -> list[dict[str, Any]]:
    """Qdrant Edge (HNSW) against NumPy brute force on **synthetic** unit vectors, one row per size.

    For each size N: N seeded random unit vectors (float32; ``clusters`` random centres
    plus noise, or uniform on the sphere with ``clusters=0``) are generated in chunks.
    ``queries`` perturbed copies of stored vectors are searched one at a time through
    NumPy (``X @ q`` + ``argpartition``: the exact top-k), then the vectors are upserted
    with integer ids into a fresh Qdrant Edge shard under ``work_dir`` (one Cosine
    vector), which is flushed and optimised so the HNSW graph is built at every size
    (the indexing threshold is lowered to 1 KB), and the same queries are searched
    through Edge. recall@k is Edge's overlap with the exact top-k.

    Build settings: ``m`` and ``ef_construct`` (None: Qdrant's defaults, 16 and 100) and
    ``quantization`` (int8 scalar quantization, searched with rescoring on the float32
    vectors and oversampling 2). Qdrant Edge builds HNSW on one thread, so the defaults
    here (16, 64, int8) keep a 1M x 384 build on a 2-core machine to a few minutes; with
    Qdrant's defaults it takes well over ten. ``hnsw_ef`` is the search beam of the main
    measurement (None: Qdrant's default, ``ef_construct``); ``ef_sweep`` repeats the
    queries at other beams (latency and recall). The Edge timing includes converting the
    query to a Python list, which every Edge call from Python pays.

    Each row: ``n, dim, edge_p50_ms, edge_p95_ms, numpy_p50_ms, numpy_p95_ms,
    speedup_p50`` (NumPy p50 / Edge p50), ``edge_recall@{k}``, ``edge_build_s``
    (flush + optimise: the HNSW build), ``edge_insert_s``, ``ef_sweep`` (a list of
    ``{hnsw_ef, p50_ms, p95_ms, recall@k}``), the configuration, and ``synthetic: True``.
    """
    import qdrant_edge as qe

    if dim <= 0 or queries <= 0 or k <= 0:
        raise ValueError("dim, queries and k must be positive")
    for n in sizes:
        if n <= k:
            raise ValueError(f"every size must exceed k={k}, got {n}")
    own_dir = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="tandem-vector-bench-")) if work_dir is None else Path(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    hnsw = None
    if m is not None or ef_construct is not None:
        hnsw = qe.HnswIndexConfig(m=m or 16, ef_construct=ef_construct or 100, full_scan_threshold=10_000)
    quant_config = (
        qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True) if quantization else None
    )
    quant_search = qe.QuantizationSearchParams(rescore=True, oversampling=2.0) if quantization else None

    def search_params(ef: int | None) -> qe.SearchParams | None:
        if ef is None and quant_search is None:
            return None
        return qe.SearchParams(hnsw_ef=ef, quantization=quant_search)

    rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            task = _Task(progress, f"vectors N={n:,}: generating")
            rng = np.random.default_rng([seed, n])
            x = _synthetic_matrix(n, dim, clusters, rng)
            all_queries = _perturbed_queries(x, queries + _VECTOR_WARMUP, rng)
            warm, qs = all_queries[:_VECTOR_WARMUP], all_queries[_VECTOR_WARMUP:]
            sweep = [ef for ef in ef_sweep if ef != hnsw_ef]

            task.phase(f"vectors N={n:,}: NumPy brute force", total=len(qs))
            for q in warm:
                _numpy_topk(x, q, k)
            numpy_ms: list[float] = []
            exact_ids: list[set[int]] = []
            for q in qs:
                t0 = time.perf_counter()
                top = _numpy_topk(x, q, k)
                numpy_ms.append((time.perf_counter() - t0) * 1e3)
                exact_ids.append({int(i) for i in top})
                task.advance()

            shard_dir = root / f"edge-{n}"
            if shard_dir.exists():
                shutil.rmtree(shard_dir)
            config = qe.EdgeConfig(
                vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
                hnsw_config=hnsw,
                quantization_config=quant_config,
                # Build HNSW at every size, even below Qdrant's default 10 MB indexing threshold.
                optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
                wal_enabled=False,
            )
            shard = qe.EdgeShard.create(str(shard_dir), config)

            try:
                task.phase(f"vectors N={n:,}: inserting into Qdrant Edge", total=n)
                t0 = time.perf_counter()
                for start in range(0, n, upsert_batch):
                    block = x[start : start + upsert_batch].tolist()
                    points = [qe.Point(id=start + i, vector=v) for i, v in enumerate(block)]
                    shard.update(qe.UpdateOperation.upsert_points(points))
                    task.advance(len(points))
                insert_s = time.perf_counter() - t0
                task.phase(f"vectors N={n:,}: building HNSW (one thread)")
                t0 = time.perf_counter()
                shard.flush()
                shard.optimize()
                build_s = time.perf_counter() - t0
                task.advance()
                info = shard.info()

                task.phase(f"vectors N={n:,}: querying Qdrant Edge", total=len(qs) * (1 + len(sweep)))
                edge_ms, edge_ids = _edge_queries(shard, qs, warm, k, search_params(hnsw_ef), task)
                sweep_rows = []
                for ef in sweep:
                    times, ids = _edge_queries(shard, qs, warm, k, search_params(ef), task)
                    stats = latency_stats(times)
                    sweep_rows.append(
                        {
                            "hnsw_ef": ef,
                            "p50_ms": stats["p50_ms"],
                            "p95_ms": stats["p95_ms"],
                            f"recall@{k}": round(_recall(ids, exact_ids), 4),
                        }
                    )
            finally:
                shard.close()

            edge = latency_stats(edge_ms)
            brute = latency_stats(numpy_ms)
            rows.append(
                {
                    "n": n,
                    "dim": dim,
                    "queries": len(qs),
                    "k": k,
                    "edge_p50_ms": edge["p50_ms"],
                    "edge_p95_ms": edge["p95_ms"],
                    "edge_mean_ms": edge["mean_ms"],
                    "numpy_p50_ms": brute["p50_ms"],
                    "numpy_p95_ms": brute["p95_ms"],
                    "numpy_mean_ms": brute["mean_ms"],
                    "speedup_p50": round(brute["p50_ms"] / edge["p50_ms"], 2) if edge["p50_ms"] > 0 else None,
                    f"edge_recall@{k}": round(_recall(edge_ids, exact_ids), 4),
                    "edge_build_s": round(build_s, 2),
                    "edge_insert_s": round(insert_s, 2),
                    "edge_segments": int(info.segments_count),
                    "edge_indexed_vectors": int(info.indexed_vectors_count),
                    "hnsw_m": m if m is not None else "default (16)",
                    "hnsw_ef_construct": ef_construct if ef_construct is not None else "default (100)",
                    "hnsw_ef": hnsw_ef if hnsw_ef is not None else "default (= ef_construct)",
                    "quantization": "int8, rescored, oversampling 2" if quantization else "none",
                    "ef_sweep": sweep_rows,
                    "data": f"{clusters} clusters" if clusters > 0 else "uniform",
                    # Load average over the last minute when this size finished: other work skews timings.
                    "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                    "synthetic": True,
                }
            )
            task.done(f"vectors N={n:,}: done")
            del x, qs, warm, all_queries, shard
            gc.collect()
            shutil.rmtree(shard_dir, ignore_errors=True)
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------- #
# Real catalogue pipeline
# --------------------------------------------------------------------------- #


def bench_catalogue(
    settings: Settings,
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
    from api.components import build_image_encoder, build_text_encoder
    from retrieval.catalogue import load_catalogue
    from retrieval.edge_store import EdgeStore
    from retrieval.images import read_image_file
    from retrieval.indexer import build_index
    from retrieval.search import Retriever, SearchQuery
    from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR

    catalogue = load_catalogue(settings.catalogue.path, settings.catalogue.columns, limit=limit)
    if len(catalogue) == 0:
        raise ValueError(f"the catalogue in {settings.catalogue.path} has no valid product")
    load_task = _Task(progress, "catalogue: loading encoders")
    text_encoder = build_text_encoder(settings)
    image_encoder = build_image_encoder(settings)
    load_task.done("catalogue: encoders loaded")

    bench_root = settings.home / "bench"
    bench_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="catalogue-", dir=bench_root))
    store = EdgeStore(tmp / "index", hnsw_ef=settings.qdrant.hnsw_ef)
    try:
        index_task = _Task(progress, f"catalogue: indexing {len(catalogue):,} products", total=len(catalogue))
        report = build_index(
            catalogue, store, text_encoder, image_encoder, limits=settings.images, progress=index_task.advance
        )
        index_task.done(f"catalogue: indexed {report.indexed:,} products")

        retriever = Retriever(store, text_encoder, image_encoder)
        rng = random.Random(seed)
        products = catalogue.products
        text_sample = rng.sample(products, min(queries, len(products)))
        with_image = [p for p in products if p.image_path is not None]
        image_sample = rng.sample(with_image, min(queries, len(with_image)))
        titles = [p.title for p in text_sample]

        query_task = _Task(progress, "catalogue: timing queries", total=2 * (len(titles) + len(image_sample)))
        for title in titles[:_WARMUP]:
            retriever.search(SearchQuery(text=title), k=k)
        text_ms: list[float] = []
        for title in titles:
            t0 = time.perf_counter()
            retriever.search(SearchQuery(text=title), k=k)
            text_ms.append((time.perf_counter() - t0) * 1e3)
            query_task.advance()

        def photo_query(path: Path) -> np.ndarray:
            img = read_image_file(path, settings.images)
            vec = retriever.encode(SearchQuery(image=img))[IMAGE_VECTOR]
            retriever.search_vectors({IMAGE_VECTOR: vec}, k=k)
            return vec

        image_paths = [p.image_path for p in image_sample if p.image_path is not None]
        for path in image_paths[:_WARMUP]:
            photo_query(path)
        image_ms: list[float] = []
        image_vectors: list[np.ndarray] = []
        for path in image_paths:
            t0 = time.perf_counter()
            image_vectors.append(photo_query(path))
            image_ms.append((time.perf_counter() - t0) * 1e3)
            query_task.advance()

        text_vectors = text_encoder.encode(titles)
        search_ms: list[float] = []
        for using, vectors in ((TEXT_VECTOR, list(text_vectors)), (IMAGE_VECTOR, image_vectors)):
            for vec in vectors:
                t0 = time.perf_counter()
                store.search(vec, using=using, k=k)
                search_ms.append((time.perf_counter() - t0) * 1e3)
                query_task.advance()
        query_task.done("catalogue: queries timed")
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
        "text_query": latency_stats(text_ms),
        "image_query": latency_stats(image_ms) if image_ms else None,
        "search_only": latency_stats(search_ms),
    }


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _recall_key(row: dict[str, Any]) -> str:
    return next((key for key in row if key.startswith("edge_recall@")), "edge_recall@10")


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# Retrieval benchmark", ""]
    if results.get("generated_at"):
        lines += [f"Generated {results['generated_at']}.", ""]

    machine = results.get("machine") or {}
    if machine:
        lines += ["## Machine", ""]
        lines += _table(["", "value"], [[key, value] for key, value in machine.items()])

    cat = results.get("catalogue")
    lines += ["## Catalogue pipeline (real data)", ""]
    if not cat:
        lines += ["Not run.", ""]
    else:
        lines += [
            f"Catalogue `{cat.get('catalogue', '?')}`, text encoder `{cat.get('text_encoder', '?')}`, "
            f"image encoder `{cat.get('image_encoder', '?')}`, device {cat.get('device', '?')}; "
            f"flat search (Qdrant Edge, top {cat.get('k', 10)}).",
            "",
        ]
        lines += _table(
            ["products", "failed", "index s", "images/s", "texts/s"],
            [
                [
                    cat.get("products"),
                    cat.get("failed"),
                    cat.get("index_seconds"),
                    cat.get("images_per_s"),
                    cat.get("texts_per_s"),
                ]
            ],
        )
        stages = [
            ("text query (encode + search)", cat.get("text_query")),
            ("photo query (decode + encode + search)", cat.get("image_query")),
            ("search only (precomputed vector)", cat.get("search_only")),
        ]
        lines += _table(
            ["query", "p50 ms", "p95 ms", "mean ms", "queries"],
            [[name, s.get("p50_ms"), s.get("p95_ms"), s.get("mean_ms"), s.get("n")] for name, s in stages if s],
        )

    rows = results.get("vector_search") or []
    lines += ["## Vector search: Qdrant Edge HNSW vs NumPy brute force (synthetic vectors)", ""]
    if not rows:
        lines += ["Not run.", ""]
    else:
        lines += [f"**{SYNTHETIC_NOTE}**", ""]
        first = rows[0]
        lines += [
            f"Qdrant Edge: HNSW m={first.get('hnsw_m', '?')}, ef_construct={first.get('hnsw_ef_construct', '?')}, "
            f"search ef={first.get('hnsw_ef', '?')}, quantization: {first.get('quantization', '?')}. "
            f"{first.get('queries', '?')} single-vector queries per size, top {first.get('k', 10)}, one at a time. "
            "Build = flush + optimise (HNSW construction; Qdrant Edge builds on one thread). "
            "Recall is HNSW's overlap with the exact NumPy result.",
            "",
        ]
        recall = _recall_key(first)
        lines += _table(
            [
                "N",
                "dim",
                "data",
                "Edge p50 ms",
                "Edge p95 ms",
                "NumPy p50 ms",
                "NumPy p95 ms",
                "speed-up p50",
                recall.replace("edge_", "Edge "),
                "insert s",
                "build s",
                "synthetic",
            ],
            [
                [
                    r.get("n"),
                    r.get("dim"),
                    r.get("data", "synthetic"),
                    r.get("edge_p50_ms"),
                    r.get("edge_p95_ms"),
                    r.get("numpy_p50_ms"),
                    r.get("numpy_p95_ms"),
                    r.get("speedup_p50"),
                    r.get(_recall_key(r)),
                    r.get("edge_insert_s"),
                    r.get("edge_build_s"),
                    "synthetic" if r.get("synthetic", True) else "real",
                ]
                for r in rows
            ],
        )
        sweep = [(r, s) for r in rows for s in r.get("ef_sweep") or []]
        if sweep:
            lines += ["Search beam sweep (same index, same queries, synthetic):", ""]
            lines += _table(
                ["N", "search ef", "Edge p50 ms", "Edge p95 ms", recall.replace("edge_", "")],
                [
                    [r.get("n"), s.get("hnsw_ef"), s.get("p50_ms"), s.get("p95_ms"), s.get(recall.replace("edge_", ""))]
                    for r, s in sweep
                ],
            )
    notes = results.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def _plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ns = [r["n"] for r in rows]
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(ns, [r["edge_p50_ms"] for r in rows], marker="o", label="Qdrant Edge HNSW (p50)")
    ax.plot(ns, [r["numpy_p50_ms"] for r in rows], marker="s", label="NumPy brute force (p50)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vectors stored (N, log scale)")
    ax.set_ylabel("query latency p50, ms (log scale)")
    dim = rows[0].get("dim", "?")
    ax.set_title(f"Single-query latency vs N (synthetic, dim {dim})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def write_report(results: dict[str, Any], reports_dir: Path, name: str = "retrieval_bench") -> tuple[Path, Path]:
    """Write ``name.json``, ``name.md`` and (with vector rows) the plot ``name.png`` in ``reports_dir``.

    ``results`` holds ``machine`` (dict), ``catalogue`` (dict from :func:`bench_catalogue`
    or None), ``vector_search`` (rows from :func:`bench_vector_search`) and optionally
    ``generated_at`` and ``notes`` (list of strings). Returns the JSON and Markdown paths.
    """
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    json_path = reports_dir / f"{name}.json"
    md_path = reports_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    rows = results.get("vector_search") or []
    markdown = _markdown(results)
    if rows:
        png_path = reports_dir / f"{name}.png"
        _plot(rows, png_path)
        markdown += f"\n![p50 latency vs N]({png_path.name})\n"
    md_path.write_text(markdown, encoding="utf-8")
    return json_path, md_path


# --------------------------------------------------------------------------- #
# Entry points
# --------------------------------------------------------------------------- #


def run(
    settings: Settings,
    *,
    limit: int | None = None,
    sizes: Sequence[int] = DEFAULT_SIZES,
    queries: int = 200,
    reports_dir: Path = Path("eval/reports"),
    progress: Progress | None = None,
    catalogue: bool = True,
    notes: Sequence[str] = (),
    name: str = "retrieval_bench",
) -> dict[str, Any]:
    """Run the catalogue benchmark (unless ``catalogue=False``) and the synthetic one, and write the report.

    Returns the results dict with ``report`` (the paths written) added.
    """
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "catalogue": bench_catalogue(settings, limit, queries, progress) if catalogue else None,
        "vector_search": [],
        "notes": list(notes),
    }
    if sizes:
        bench_root = settings.home / "bench"
        bench_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="vectors-", dir=bench_root))
        try:
            results["vector_search"] = bench_vector_search(sizes, queries=queries, work_dir=work, progress=progress)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    json_path, md_path = write_report(results, reports_dir, name)
    results["report"] = {"json": str(json_path), "markdown": str(md_path)}
    return results


def main(argv: Sequence[str] | None = None, *, echo: Callable[[str], None] = print) -> int:
    """``python -m eval.bench_retrieval``: run the benchmarks with a rich progress display."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from api.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m eval.bench_retrieval", description="Tandem retrieval benchmarks")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N catalogue products")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(DEFAULT_SIZES), help="synthetic sizes")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--reports-dir", type=Path, default=Path("eval/reports"))
    parser.add_argument("--name", default="retrieval_bench")
    parser.add_argument("--no-catalogue", action="store_true", help="run only the synthetic vector benchmark")
    args = parser.parse_args(argv)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        results = run(
            get_settings(),
            limit=args.limit,
            sizes=tuple(args.sizes),
            queries=args.queries,
            reports_dir=args.reports_dir,
            progress=progress,
            catalogue=not args.no_catalogue,
            name=args.name,
        )
    echo(f"wrote {results['report']['json']} and {results['report']['markdown']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
