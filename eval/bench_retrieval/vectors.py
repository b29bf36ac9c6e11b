"""The synthetic benchmark: a fresh Qdrant Edge shard (HNSW) against exact NumPy search, size by size.

For each size N, seeded random unit vectors (clustered by default, as real embeddings are)
are searched one query at a time by NumPy (``X @ q`` + ``argpartition``: the exact top-k),
then upserted into a new Qdrant Edge shard whose HNSW graph is built at every size, and the
same queries are searched through Edge at the main beam and at each beam of the sweep. The
data is **synthetic**: :data:`SYNTHETIC_NOTE` says so in the report.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import qdrant_edge as qe

from eval.bench_retrieval.measure import ProgressRow, latency_stats, top_k_indices

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["DEFAULT_SIZES", "SYNTHETIC_NOTE", "bench_vector_search"]

DEFAULT_SIZES: tuple[int, ...] = (10_000, 100_000, 1_000_000)

# Per-dimension standard deviation of the noise around a cluster centre (centres have unit
# variance per dimension): a point's cosine to its centre is ~1/sqrt(1 + 0.7^2) = 0.82, and
# two points of one cluster have cosine ~0.67, whatever the dimension.
_CLUSTER_NOISE = 0.7
# Relative size of a query's perturbation of its source vector: cosine(query, source) ~ 0.95.
_QUERY_NOISE = 0.33
_GEN_CHUNK = 50_000
# The synthetic benchmark warms up with its own queries, distinct from the timed ones, so a
# timed query never finds its own graph path already in cache.
_VECTOR_WARMUP = 20

SYNTHETIC_NOTE = (
    "Synthetic data: seeded random unit vectors, not catalogue embeddings. By default a mixture of "
    "random clusters (Gaussian noise around random centres, normalised), since real embeddings are "
    "clustered; queries are random perturbations of stored vectors (cosine ~0.95 to their source)."
)


@dataclass(frozen=True)
class _Setup:
    """The arguments of :func:`bench_vector_search` that shape every size's run."""

    dim: int
    queries: int
    k: int
    seed: int
    clusters: int
    m: int | None
    ef_construct: int | None
    quantization: bool
    hnsw_ef: int | None
    ef_sweep: Sequence[int]
    upsert_batch: int

    def edge_config(self) -> qe.EdgeConfig:
        hnsw = None
        if self.m is not None or self.ef_construct is not None:
            hnsw = qe.HnswIndexConfig(m=self.m or 16, ef_construct=self.ef_construct or 100, full_scan_threshold=10_000)
        quant = (
            qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
            if self.quantization
            else None
        )
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine),
            hnsw_config=hnsw,
            quantization_config=quant,
            # Build HNSW at every size, even below Qdrant's default 10 MB indexing threshold.
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
            wal_enabled=False,
        )

    def search_params(self, ef: int | None) -> qe.SearchParams | None:
        quant_search = qe.QuantizationSearchParams(rescore=True, oversampling=2.0) if self.quantization else None
        if ef is None and quant_search is None:
            return None
        return qe.SearchParams(hnsw_ef=ef, quantization=quant_search)


@dataclass
class _EdgeRun:
    """What one Edge shard measured: the main pass, the beam sweep, and the time to fill and build it."""

    times_ms: list[float]
    ids: list[set[int]]
    insert_s: float
    build_s: float
    segments: int
    indexed_vectors: int
    sweep: list[dict[str, Any]]


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


def _numpy_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-``k`` row indices of ``x`` by dot product with ``q``, best first."""
    return top_k_indices(x @ q, k)


def _recall(found: Sequence[set[int]], exact: Sequence[set[int]]) -> float:
    return float(np.mean([len(f & e) / len(e) for f, e in zip(found, exact, strict=True)]))


def _numpy_queries(
    x: np.ndarray, qs: np.ndarray, warm: np.ndarray, k: int, task: ProgressRow
) -> tuple[list[float], list[set[int]]]:
    """Time each exact search of ``qs`` after running ``warm``; also return the exact ids."""
    for q in warm:
        _numpy_topk(x, q, k)
    times: list[float] = []
    ids: list[set[int]] = []
    for q in qs:
        t0 = time.perf_counter()
        top = _numpy_topk(x, q, k)
        times.append((time.perf_counter() - t0) * 1e3)
        ids.append({int(i) for i in top})
        task.advance()
    return times, ids


def _edge_queries(
    shard: Any, qs: np.ndarray, warm: np.ndarray, k: int, params: Any, task: ProgressRow
) -> tuple[list[float], list[set[int]]]:
    """Time each query of ``qs`` through a Qdrant Edge shard after running ``warm``; also return the ids found."""

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


def _fill_and_build(shard: Any, x: np.ndarray, upsert_batch: int, task: ProgressRow) -> tuple[float, float]:
    """Upsert ``x`` with integer ids, then flush and optimise (the HNSW build); returns both durations in s."""
    n = len(x)
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
    return insert_s, build_s


def _edge_run(
    setup: _Setup,
    shard_dir: Path,
    x: np.ndarray,
    queries: tuple[np.ndarray, np.ndarray],
    exact_ids: list[set[int]],
    task: ProgressRow,
) -> _EdgeRun:
    """Build a fresh shard in ``shard_dir`` from ``x`` and time ``queries`` (warm-up, timed) at every beam."""
    warm, qs = queries
    k, n = setup.k, len(x)
    sweep = [ef for ef in setup.ef_sweep if ef != setup.hnsw_ef]
    if shard_dir.exists():
        shutil.rmtree(shard_dir)
    shard = qe.EdgeShard.create(str(shard_dir), setup.edge_config())
    try:
        insert_s, build_s = _fill_and_build(shard, x, setup.upsert_batch, task)
        info = shard.info()
        task.phase(f"vectors N={n:,}: querying Qdrant Edge", total=len(qs) * (1 + len(sweep)))
        edge_ms, edge_ids = _edge_queries(shard, qs, warm, k, setup.search_params(setup.hnsw_ef), task)
        sweep_rows = []
        for ef in sweep:
            times, ids = _edge_queries(shard, qs, warm, k, setup.search_params(ef), task)
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
    segments, indexed = int(info.segments_count), int(info.indexed_vectors_count)
    return _EdgeRun(edge_ms, edge_ids, insert_s, build_s, segments, indexed, sweep_rows)


def _row(
    setup: _Setup, n: int, queries: int, numpy_ms: list[float], exact_ids: list[set[int]], run: _EdgeRun
) -> dict[str, Any]:
    """The report row of one size: both latencies, the speed-up, Edge's recall, the build and the configuration."""
    k, m, ef_construct, hnsw_ef = setup.k, setup.m, setup.ef_construct, setup.hnsw_ef
    edge = latency_stats(run.times_ms)
    brute = latency_stats(numpy_ms)
    return {
        "n": n,
        "dim": setup.dim,
        "queries": queries,
        "k": k,
        "edge_p50_ms": edge["p50_ms"],
        "edge_p95_ms": edge["p95_ms"],
        "edge_mean_ms": edge["mean_ms"],
        "numpy_p50_ms": brute["p50_ms"],
        "numpy_p95_ms": brute["p95_ms"],
        "numpy_mean_ms": brute["mean_ms"],
        "speedup_p50": round(brute["p50_ms"] / edge["p50_ms"], 2) if edge["p50_ms"] > 0 else None,
        f"edge_recall@{k}": round(_recall(run.ids, exact_ids), 4),
        "edge_build_s": round(run.build_s, 2),
        "edge_insert_s": round(run.insert_s, 2),
        "edge_segments": run.segments,
        "edge_indexed_vectors": run.indexed_vectors,
        "hnsw_m": m if m is not None else "default (16)",
        "hnsw_ef_construct": ef_construct if ef_construct is not None else "default (100)",
        "hnsw_ef": hnsw_ef if hnsw_ef is not None else "default (= ef_construct)",
        "quantization": "int8, rescored, oversampling 2" if setup.quantization else "none",
        "ef_sweep": run.sweep,
        "data": f"{setup.clusters} clusters" if setup.clusters > 0 else "uniform",
        # Load average over the last minute when this size finished: other work skews timings.
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "synthetic": True,
    }


def _bench_size(setup: _Setup, n: int, root: Path, progress: Progress | None) -> dict[str, Any]:
    """Generate, search exactly, build and search the shard for one size N; returns its report row."""
    task = ProgressRow(progress, f"vectors N={n:,}: generating")
    rng = np.random.default_rng([setup.seed, n])
    x = _synthetic_matrix(n, setup.dim, setup.clusters, rng)
    all_queries = _perturbed_queries(x, setup.queries + _VECTOR_WARMUP, rng)
    warm, qs = all_queries[:_VECTOR_WARMUP], all_queries[_VECTOR_WARMUP:]

    task.phase(f"vectors N={n:,}: NumPy brute force", total=len(qs))
    numpy_ms, exact_ids = _numpy_queries(x, qs, warm, setup.k, task)
    shard_dir = root / f"edge-{n}"
    run = _edge_run(setup, shard_dir, x, (warm, qs), exact_ids, task)
    row = _row(setup, n, len(qs), numpy_ms, exact_ids, run)
    task.done(f"vectors N={n:,}: done")
    # A million 384-d vectors are 1.5 GB: free them before the next size is generated.
    del x, qs, warm, all_queries
    gc.collect()
    shutil.rmtree(shard_dir, ignore_errors=True)
    return row


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

    if dim <= 0 or queries <= 0 or k <= 0:
        raise ValueError("dim, queries and k must be positive")
    for n in sizes:
        if n <= k:
            raise ValueError(f"every size must exceed k={k}, got {n}")
    setup = _Setup(dim, queries, k, seed, clusters, m, ef_construct, quantization, hnsw_ef, ef_sweep, upsert_batch)
    own_dir = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="tandem-vector-bench-")) if work_dir is None else Path(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        return [_bench_size(setup, n, root, progress) for n in sizes]
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
