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

Modules: :mod:`~eval.bench_retrieval.measure` (latency summaries, exact top-k, the progress
row), :mod:`~eval.bench_retrieval.catalogue` and :mod:`~eval.bench_retrieval.vectors` (the two
benchmarks), :mod:`~eval.bench_retrieval.report` (markdown, plot, files) and
:mod:`~eval.bench_retrieval.run` (both, then the report).

Example:
    >>> results = run(settings, encoders, limit=2000, sizes=(10_000,))  # doctest: +SKIP
    >>> results["vector_search"][0]["speedup_p50"]  # doctest: +SKIP
    12.3
"""

from __future__ import annotations

from eval.bench_retrieval.catalogue import bench_catalogue
from eval.bench_retrieval.measure import latency_stats, top_k_indices
from eval.bench_retrieval.report import markdown, write_report
from eval.bench_retrieval.run import run
from eval.bench_retrieval.vectors import DEFAULT_SIZES, SYNTHETIC_NOTE, bench_vector_search

__all__ = [
    "DEFAULT_SIZES",
    "SYNTHETIC_NOTE",
    "bench_catalogue",
    "bench_vector_search",
    "latency_stats",
    "markdown",
    "run",
    "top_k_indices",
    "write_report",
]
