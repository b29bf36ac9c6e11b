"""Evaluate hierarchical against flat retrieval on photo queries of catalogue products.

Relevance of a result for a query product: 3 = the same product, 2 = same full category
path and same colour attribute, 1 = same full category path, 0 otherwise. NDCG uses the
grades; Precision, Recall, MAP and MRR count grades ≥ 2 as relevant. The ideal ranking
(for NDCG and Recall) is computed from the whole index, through Qdrant counts.

Example:
    >>> report = evaluate(hier, load_queries(Path("q/products.csv"), Path("q/images")), k=10)  # doctest: +SKIP
    >>> report["hierarchical"]["ndcg@10"]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.metrics import (
    average_precision_at_k,
    latency_percentiles,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
    summarize,
)
from retrieval.catalogue import ColumnMapping, LoadIssue, Product, load_catalogue
from retrieval.categories import category_key
from retrieval.errors import ImageError
from retrieval.hierarchical import HierarchicalRetriever, SearchMode
from retrieval.images import ImageLimits, read_image_file
from retrieval.search import SearchHit, SearchQuery
from retrieval.store import SearchFilter

__all__ = [
    "EncodedQuery",
    "EvalQueries",
    "encode_queries",
    "evaluate",
    "evaluate_encoded",
    "format_table",
    "grade",
    "load_queries",
]

MODES: tuple[SearchMode, ...] = ("hierarchical", "flat")


@dataclass(slots=True)
class EvalQueries:
    """Query products (with their photos) plus the rows that could not be used."""

    products: list[Product]
    issues: list[LoadIssue]


def load_queries(csv_path: Path, images_dir: Path, mapping: ColumnMapping | None = None) -> EvalQueries:
    """Read a query CSV (the catalogue's columns) and its photos ``<product_id>.jpg``; bad rows are reported."""
    base = mapping or ColumnMapping()
    # Query photos are ``<product_id>.jpg`` whatever the catalogue's own photo pattern (make-queries writes them so).
    m = base.model_copy(
        update={"csv_name": csv_path.name, "images_dir": str(images_dir.resolve()), "image_pattern": "{id}.jpg"}
    )
    cat = load_catalogue(csv_path.parent, m, check_images=True)
    return EvalQueries(cat.products, cat.issues)


def grade(query: Product, hit: SearchHit, colour_attribute: str) -> int:
    if hit.product_id == query.product_id:
        return 3
    if tuple(hit.category) != query.category:
        return 0
    colour = query.attributes.get(colour_attribute)
    return 2 if colour is not None and hit.attributes.get(colour_attribute) == colour else 1


class _RelevanceCounts:
    """How many indexed products have each grade for a query: memoised Qdrant counts."""

    def __init__(self, hier: HierarchicalRetriever, colour_attribute: str) -> None:
        self.store = hier.retriever.store
        self.colour_attribute = colour_attribute
        self._cache: dict[tuple[str, str | None], tuple[int, int]] = {}  # (same path+colour, same path only)

    def __call__(self, q: Product) -> tuple[int, int, bool]:
        """(products graded ≥ 2 other than the query itself, products graded exactly 1, query product indexed)."""
        colour = q.attributes.get(self.colour_attribute)
        key = (q.category_path, colour)
        if key not in self._cache:
            same_path = self.store.count(SearchFilter(categories=[q.category_path]))
            same_colour = (
                self.store.count(
                    SearchFilter(categories=[q.category_path], attributes={self.colour_attribute: [colour]})
                )
                if colour
                else 0
            )
            self._cache[key] = (same_colour, same_path - same_colour)
        same_colour, only_path = self._cache[key]
        indexed = bool(self.store.existing([q.product_id]))
        return same_colour - int(indexed), only_path, indexed


def _relevance_map(
    q: Product, hits: list[SearchHit], counts: tuple[int, int], colour: str, *, query_indexed: bool = True
) -> dict[str, int]:
    """Grades of the retrieved items plus placeholders for the unretrieved relevant ones (for the ideal).

    The query's own product (grade 3) counts in the ideal only if it is in the index.
    """
    n2, n1 = counts
    rel = {h.product_id: grade(q, h, colour) for h in hits}
    if query_indexed:
        rel[q.product_id] = 3
    got2 = sum(1 for pid, g in rel.items() if g == 2)
    got1 = sum(1 for g in rel.values() if g == 1)
    for i in range(max(0, n2 - got2)):
        rel[f"__unretrieved_2_{i}"] = 2
    for i in range(max(0, n1 - got1)):
        rel[f"__unretrieved_1_{i}"] = 1
    return rel


@dataclass(slots=True)
class EncodedQuery:
    """A query photo after decoding and encoding, with the time that took."""

    product: Product
    vectors: dict[str, np.ndarray]
    front_ms: float


def encode_queries(
    hier: HierarchicalRetriever,
    queries: EvalQueries,
    *,
    limits: ImageLimits | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[EncodedQuery], list[str]]:
    """Decode and encode every query photo once; unreadable photos are returned as skip reasons."""
    limits = limits or ImageLimits()
    encoded: list[EncodedQuery] = []
    skipped: list[str] = [str(i) for i in queries.issues]
    for q in queries.products:
        t0 = time.perf_counter()
        try:
            if q.image_path is None:
                raise ImageError("no photo")
            img = read_image_file(q.image_path, limits)
        except ImageError as exc:
            skipped.append(f"{q.product_id}: {exc}")
        else:
            vectors = hier.retriever.encode(SearchQuery(image=img))
            encoded.append(EncodedQuery(q, vectors, (time.perf_counter() - t0) * 1000))
        if progress:
            progress(1)
    return encoded, skipped


def evaluate_encoded(
    hier: HierarchicalRetriever,
    encoded: Sequence[EncodedQuery],
    *,
    k: int = 10,
    colour_attribute: str = "base_colour",
    modes: Sequence[SearchMode] = MODES,
) -> dict[str, Any]:
    """Metrics of each mode over already-encoded queries (level-1 settings can be swept without re-encoding)."""
    counts = _RelevanceCounts(hier, colour_attribute)
    key_depth = hier.categories.depth
    per_mode: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    latency: dict[str, list[float]] = {m: [] for m in modes}
    search_only: dict[str, list[float]] = {m: [] for m in modes}
    for eq in encoded:
        q = eq.product
        n2, n1, indexed = counts(q)
        true_key = category_key(q.category, key_depth)
        for mode in modes:
            t1 = time.perf_counter()
            result = hier.search_vectors(eq.vectors, k=k, mode=mode)
            elapsed = (time.perf_counter() - t1) * 1000
            latency[mode].append(eq.front_ms + elapsed)
            search_only[mode].append(elapsed)
            ranked = [h.product_id for h in result.hits]
            rel = _relevance_map(q, result.hits, (n2, n1), colour_attribute, query_indexed=indexed)
            kept = result.level1.kept if result.level1 else None
            per_mode[mode].append(
                {
                    f"precision@{k}": precision_at_k(ranked, rel, k, threshold=2),
                    f"recall@{k}": recall_at_k(ranked, rel, k, threshold=2),
                    f"ndcg@{k}": ndcg_at_k(ranked, rel, k),
                    f"map@{k}": average_precision_at_k(ranked, rel, k, threshold=2),
                    "mrr": reciprocal_rank(ranked, rel, threshold=2),
                    "same_product@1": 1.0 if ranked[:1] == [q.product_id] else 0.0,
                    "category_recall": 1.0 if kept is None or true_key in kept else 0.0,
                    "searched_fraction": result.searched_fraction,
                    "categories_kept": float(len(kept)) if kept is not None else float(len(hier.categories.keys)),
                }
            )
    out: dict[str, Any] = {}
    for mode in modes:
        if not per_mode[mode]:
            out[mode] = {}
            continue
        summary = summarize(per_mode[mode])
        summary.update(latency_percentiles(latency[mode]))
        srch = latency_percentiles(search_only[mode])
        summary["search_ms_p50"] = srch["latency_ms_p50"]
        summary["search_ms_p95"] = srch["latency_ms_p95"]
        out[mode] = {name: round(value, 4) for name, value in summary.items()}
    out["queries"] = len(encoded)
    out["k"] = k
    out["level1"] = hier.config.model_dump()
    return out


def evaluate(
    hier: HierarchicalRetriever,
    queries: EvalQueries,
    *,
    k: int = 10,
    limits: ImageLimits | None = None,
    colour_attribute: str = "base_colour",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run every query in both modes; returns ``{"hierarchical": {...}, "flat": {...}, ...}``.

    Latency is end to end per mode: decode + encode (shared) + that mode's search.
    """
    encoded, skipped = encode_queries(hier, queries, limits=limits, progress=progress)
    report = evaluate_encoded(hier, encoded, k=k, colour_attribute=colour_attribute)
    report["skipped"] = skipped
    return report


def format_table(report: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """Markdown table of the two modes side by side."""
    h, f = report.get("hierarchical", {}), report.get("flat", {})
    keys = keys or [key for key in h if key in f]
    lines = ["| metric | hierarchical | flat |", "| --- | ---: | ---: |"]
    lines += [f"| {key} | {h[key]:.4f} | {f[key]:.4f} |" for key in keys]
    return "\n".join(lines)
