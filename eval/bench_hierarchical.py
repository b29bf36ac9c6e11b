"""Hierarchical against flat search as the catalogue grows: SYNTHETIC catalogues with the real category structure.

Each synthetic catalogue keeps the real catalogue's categories and their relative
sizes (the long tail included, every category at least one product), scaled to N
products. A product vector is its category's centre plus noise, so level 1 has real
work to do. Both modes run in a real Qdrant Edge shard (HNSW, keyword payload index):

* flat: one HNSW search over all N products;
* hierarchical: level 1 (query against every category prototype, policy from
  :class:`~retrieval.hierarchical.Level1Config`) then a filtered HNSW search inside the
  kept categories.

Example:
    >>> rows = bench_scaling(real_sizes, sizes=(44_072,), queries=50)  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from eval.bench_retrieval import top_k_indices
from eval.metrics import latency_percentiles
from eval.retrieval_eval import format_table
from retrieval.categories import CategoryIndex
from retrieval.encoders import l2_normalise
from retrieval.hierarchical import Level1Config, select_categories

__all__ = ["SYNTHETIC_LABEL", "bench_scaling", "scaled_sizes", "write_report"]

SYNTHETIC_LABEL = "SYNTHETIC vectors (real category structure, scaled)"
_VEC = "v"
_KEY = "category_path"
# One named list per figure a query yields, so the query loop and the report row cannot disagree on an order.
_SERIES = ("flat", "hier", "l1", "fraction", "overlap", "hit", "exact_flat", "exact_hier")


def scaled_sizes(real: Mapping[str, int], n: int) -> dict[str, int]:
    """Category sizes proportional to ``real``, summing to ``n``, each at least 1 (largest remainder)."""
    keys = sorted(real)
    weights = np.array([real[k] for k in keys], dtype=np.float64)
    if n < len(keys):
        raise ValueError(f"need at least one product per category: n={n} < {len(keys)} categories")
    spare = n - len(keys)
    raw = weights / weights.sum() * spare
    base = np.floor(raw).astype(np.int64)
    rest = spare - int(base.sum())
    base[np.argsort(-(raw - base))[:rest]] += 1
    return {k: int(b) + 1 for k, b in zip(keys, base, strict=True)}


@dataclass(frozen=True)
class _Setup:
    """The arguments of :func:`bench_scaling` that shape every size's run."""

    dim: int
    queries: int
    k: int
    noise: float
    level1: Level1Config
    seed: int
    payload_m: int | None
    report: Callable[[str, int, int], None]


@dataclass
class _Catalogue:
    """One synthetic catalogue of N products, stored category by category."""

    n: int
    keys: list[str]
    sizes: dict[str, int]
    labels: np.ndarray
    bounds: np.ndarray
    centres: np.ndarray
    matrix: np.ndarray


def _synthetic_catalogue(real_sizes: Mapping[str, int], n: int, setup: _Setup, rng: np.random.Generator) -> _Catalogue:
    cat_sizes = scaled_sizes(real_sizes, n)
    keys = sorted(cat_sizes)
    centres = l2_normalise(rng.standard_normal((len(keys), setup.dim)))
    # Products are stored category by category, so each category is one contiguous slice of the
    # matrix: exact search inside the kept categories reads only their rows (no gather, no copy).
    labels = np.repeat(np.arange(len(keys)), [cat_sizes[c] for c in keys])
    bounds = np.concatenate([[0], np.cumsum([cat_sizes[c] for c in keys])])
    matrix = np.empty((n, setup.dim), dtype=np.float32)
    return _Catalogue(n, keys, cat_sizes, labels, bounds, centres, matrix)


def _create_shard(path: Path, dim: int, payload_m: int | None) -> Any:
    # The same engine settings as the vector benchmark (eval/bench_retrieval/vectors.py): int8 scalar
    # quantization with float rescoring keeps the single-threaded 1M HNSW build within minutes.
    shard = qe.EdgeShard.create(
        str(path),
        qe.EdgeConfig(
            vectors={_VEC: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)},
            hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=64, full_scan_threshold=10_000, payload_m=payload_m),
            quantization_config=qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
            wal_enabled=False,
        ),
    )
    # payload_m builds extra HNSW links inside each category, so a search filtered to a few
    # categories walks their own sub-graphs instead of skipping through the global one.
    keyword = qe.KeywordIndexParams(is_tenant=True) if payload_m else qe.PayloadSchemaType.Keyword
    shard.update(qe.UpdateOperation.create_field_index(_KEY, keyword))
    return shard


def _fill_and_build(shard: Any, cat: _Catalogue, setup: _Setup, rng: np.random.Generator) -> np.ndarray:
    """Draw every product around its centre, store it in the matrix and the shard, build HNSW; returns the sums."""
    n, keys, labels, report = cat.n, cat.keys, cat.labels, setup.report
    sums = np.zeros((len(keys), setup.dim), dtype=np.float64)
    chunk = 5000
    for start in range(0, n, chunk):
        lab = labels[start : start + chunk]
        noise = setup.noise * rng.standard_normal((len(lab), setup.dim)).astype(np.float32)
        x = l2_normalise(cat.centres[lab] + noise)
        np.add.at(sums, lab, x)
        cat.matrix[start : start + len(lab)] = x
        shard.update(
            qe.UpdateOperation.upsert_points(
                [
                    qe.Point(id=start + i, vector={_VEC: x[i].tolist()}, payload={_KEY: keys[lab[i]]})
                    for i in range(len(lab))
                ]
            )
        )
        report(f"synthetic {n:,}: inserting", min(start + chunk, n), n)
    shard.flush()
    report(f"synthetic {n:,}: building HNSW", 0, 1)
    shard.optimize()
    report(f"synthetic {n:,}: building HNSW", 1, 1)
    return sums


def _time_queries(
    shard: Any, cat: _Catalogue, index: CategoryIndex, setup: _Setup, rng: np.random.Generator
) -> dict[str, list[Any]]:
    """Both modes, in HNSW and exactly, for fresh samples of the categories (chosen in proportion to their size)."""
    n, keys, k, protos = cat.n, cat.keys, setup.k, index.proto_image
    q_lab = cat.labels[rng.integers(0, n, size=setup.queries)]
    noise = setup.noise * rng.standard_normal((setup.queries, setup.dim)).astype(np.float32)
    qs = l2_normalise(cat.centres[q_lab] + noise)
    params = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=2.0))
    for q in qs[:10]:  # warm-up: first touches of the index pages are not what a server sees
        shard.query(qe.QueryRequest(limit=k, query=qe.Query.Nearest(q.tolist(), using=_VEC), params=params))
    out: dict[str, list[Any]] = {key: [] for key in _SERIES}
    for i, q in enumerate(qs):
        ql = q.tolist()
        t = time.perf_counter()
        flat = shard.query(qe.QueryRequest(limit=k, query=qe.Query.Nearest(ql, using=_VEC), params=params))
        out["flat"].append((time.perf_counter() - t) * 1000)
        t = t_l1_start = time.perf_counter()
        chosen = select_categories(protos @ q, index, setup.level1, min_products=k)
        t_l1 = time.perf_counter()
        flt = qe.Filter(must=[qe.FieldCondition(key=_KEY, match=qe.MatchAny(any=chosen.kept))])
        hier = shard.query(qe.QueryRequest(limit=k, query=qe.Query.Nearest(ql, using=_VEC), filter=flt, params=params))
        out["hier"].append((time.perf_counter() - t) * 1000)
        out["l1"].append((t_l1 - t) * 1000)
        out["fraction"].append(chosen.searched_fraction)
        out["hit"].append(keys[q_lab[i]] in chosen.kept)
        out["overlap"].append(len({p.id for p in flat} & {p.id for p in hier}) / k)
        # Exact (brute-force) search, the single-stage baseline of the reference paper.
        t = time.perf_counter()
        top_k_indices(cat.matrix @ q, k)
        out["exact_flat"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        kept_idx = [index.position[c] for c in chosen.kept]
        scores = np.concatenate([cat.matrix[cat.bounds[c] : cat.bounds[c + 1]] @ q for c in kept_idx])
        top_k_indices(scores, k)
        out["exact_hier"].append((time.perf_counter() - t) * 1000 + (t_l1 - t_l1_start) * 1000)
        setup.report(f"synthetic {n:,}: queries", i + 1, setup.queries)
    return out


def _scaling_row(n: int, categories: int, ms: Mapping[str, list[Any]], build_s: float) -> dict[str, Any]:
    f, h = latency_percentiles(ms["flat"]), latency_percentiles(ms["hier"])
    return {
        "n": n,
        "categories": categories,
        "flat_p50_ms": round(f["latency_ms_p50"], 3),
        "flat_p95_ms": round(f["latency_ms_p95"], 3),
        "hier_p50_ms": round(h["latency_ms_p50"], 3),
        "hier_p95_ms": round(h["latency_ms_p95"], 3),
        "level1_p50_ms": round(float(np.median(ms["l1"])), 3),
        "speedup_p50": round(f["latency_ms_p50"] / h["latency_ms_p50"], 2),
        "exact_flat_p50_ms": round(float(np.median(ms["exact_flat"])), 3),
        "exact_hier_p50_ms": round(float(np.median(ms["exact_hier"])), 3),
        "exact_speedup_p50": round(float(np.median(ms["exact_flat"]) / np.median(ms["exact_hier"])), 2),
        "searched_fraction": round(float(np.mean(ms["fraction"])), 4),
        "category_recall": round(float(np.mean(ms["hit"])), 4),
        "top10_overlap_with_flat": round(float(np.mean(ms["overlap"])), 4),
        "build_s": round(build_s, 1),
        "synthetic": True,
    }


def _bench_size(real_sizes: Mapping[str, int], n: int, setup: _Setup, work_dir: Path | None) -> dict[str, Any]:
    rng = np.random.default_rng(setup.seed)
    cat = _synthetic_catalogue(real_sizes, n, setup, rng)
    tmp = Path(tempfile.mkdtemp(prefix=f"tandem-hier-{n}-", dir=work_dir))
    try:
        shard = _create_shard(tmp, setup.dim, setup.payload_m)
        t0 = time.perf_counter()
        sums = _fill_and_build(shard, cat, setup, rng)
        build_s = time.perf_counter() - t0
        protos = l2_normalise(sums.astype(np.float32))
        index = CategoryIndex(None, cat.keys, np.array([cat.sizes[c] for c in cat.keys]), protos, protos, protos)
        row = _scaling_row(n, len(cat.keys), _time_queries(shard, cat, index, setup, rng), build_s)
        shard.close()
        del cat
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        gc.collect()
    return row


def bench_scaling(
    real_sizes: Mapping[str, int],
    *,
    sizes: Sequence[int] = (44_072, 200_000, 1_000_000),
    dim: int = 384,
    queries: int = 200,
    k: int = 10,
    noise: float = 0.06,
    level1: Level1Config | None = None,
    seed: int = 0,
    payload_m: int | None = None,
    work_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Search-stage latency of both modes at each catalogue size, on SYNTHETIC vectors."""
    level1 = level1 or Level1Config(policy="mass", representation="prototype")
    report = progress or (lambda stage, done, total: None)
    setup = _Setup(dim, queries, k, noise, level1, seed, payload_m, report)
    return [_bench_size(real_sizes, n, setup, work_dir) for n in sizes]


def write_report(
    results: dict[str, Any], reports_dir: Path, name: str = "hierarchical_bench"
) -> tuple[Path, Path, Path | None]:
    """Write ``name.json``, ``name.md`` and the plot ``name.png`` (latency against catalogue size, both modes).

    ``results`` holds ``machine``, ``scaling`` (rows of :func:`bench_scaling`) and optionally
    ``eval`` (the report of :func:`eval.retrieval_eval.evaluate` on the real catalogue).
    """

    reports_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = reports_dir / f"{name}.json", reports_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = ["# Hierarchical against flat retrieval", ""]
    m = results.get("machine", {})
    if m:
        lines += [
            f"Machine: {m.get('cpu') or m.get('cpu_model', '?')}, {m.get('logical_cores', '?')} logical cores, "
            f"{m.get('ram_gb', '?')} GB RAM, GPU: {m.get('gpu', 'none')}; generated {results.get('generated_at', '')}.",
            "",
        ]
    ev = results.get("eval")
    if ev:
        lines += [
            f"## Real catalogue: {ev.get('queries')} buyer-style photo queries, K={ev.get('k')}",
            "",
            "Queries are held-out catalogue products (never seen by the image tower) re-photographed: cropped,"
            " enlarged to 100–400 px, slightly rotated, re-exposed and JPEG re-compressed (`tandem eval make-queries`)."
            " Relevance: 3 same product, 2 same category path and colour, 1 same path. Latency is end to end:"
            " decode + encode + search.",
            "",
            format_table(ev),
            "",
            f"Level 1: `{json.dumps(ev.get('level1', {}))}`",
            "",
        ]
    rows = results.get("scaling") or []
    png_path: Path | None = None
    if rows:
        lines += [
            f"## Search stage against catalogue size ({SYNTHETIC_LABEL})",
            "",
            "HNSW columns: Qdrant Edge with and without the category filter. Exact columns: brute-force search"
            " over all N (the single-stage baseline of the reference paper) against brute force over the kept"
            " categories only (level 1 included).",
            "",
            "| N | HNSW flat p50 ms | HNSW flat p95 ms | HNSW hier p50 ms | HNSW hier p95 ms | level 1 p50 ms |"
            " HNSW speed-up | exact flat p50 ms | exact hier p50 ms | exact speed-up | searched | category recall |"
            " top-10 overlap with flat | build s |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            lines.append(
                f"| {r['n']:,} | {r['flat_p50_ms']} | {r['flat_p95_ms']} | {r['hier_p50_ms']} | {r['hier_p95_ms']} |"
                f" {r['level1_p50_ms']} | {r['speedup_p50']}× | {r.get('exact_flat_p50_ms', '')} |"
                f" {r.get('exact_hier_p50_ms', '')} | {r.get('exact_speedup_p50', '')}× |"
                f" {r['searched_fraction']:.1%} |"
                f" {r['category_recall']:.3f} | {r['top10_overlap_with_flat']:.3f} | {r['build_s']} |"
            )
        png_path = reports_dir / f"{name}.png"
        _plot(rows, png_path)
        lines += ["", f"![latency against catalogue size]({png_path.name})", ""]
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path, png_path


def _plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)

    n = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode, colour in (("flat", "tab:gray"), ("hier", "tab:blue")):
        ax.plot(n, [r[f"{mode}_p50_ms"] for r in rows], "o-", color=colour, label=f"HNSW {mode} p50")
        ax.plot(n, [r[f"{mode}_p95_ms"] for r in rows], "o--", color=colour, alpha=0.6, label=f"HNSW {mode} p95")
        if f"exact_{mode}_p50_ms" in rows[0]:
            ax.plot(n, [r[f"exact_{mode}_p50_ms"] for r in rows], "s:", color=colour, label=f"exact {mode} p50")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalogue size (products)")
    ax.set_ylabel("search-stage latency (ms)")
    ax.set_title("Hierarchical vs flat search in Qdrant Edge\n" + SYNTHETIC_LABEL, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
