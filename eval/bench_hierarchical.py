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
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from eval.bench_retrieval import top_k_indices
from eval.metrics import latency_percentiles
from retrieval.categories import CategoryIndex
from retrieval.encoders import l2_normalise
from retrieval.hierarchical import Level1Config, select_categories

__all__ = ["SYNTHETIC_LABEL", "bench_scaling", "scaled_sizes", "write_report"]

SYNTHETIC_LABEL = "SYNTHETIC vectors (real category structure, scaled)"
_VEC = "v"
_KEY = "category_path"


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
    rows = []
    for n in sizes:
        rng = np.random.default_rng(seed)
        cat_sizes = scaled_sizes(real_sizes, n)
        keys = sorted(cat_sizes)
        centres = l2_normalise(rng.standard_normal((len(keys), dim)))
        # Products are stored category by category, so each category is one contiguous slice of the
        # matrix: exact search inside the kept categories reads only their rows (no gather, no copy).
        labels = np.repeat(np.arange(len(keys)), [cat_sizes[c] for c in keys])
        bounds = np.concatenate([[0], np.cumsum([cat_sizes[c] for c in keys])])
        matrix = np.empty((n, dim), dtype=np.float32)
        tmp = Path(tempfile.mkdtemp(prefix=f"tandem-hier-{n}-", dir=work_dir))
        try:
            # The same engine settings as the vector benchmark (eval/bench_retrieval.py): int8 scalar
            # quantization with float rescoring keeps the single-threaded 1M HNSW build within minutes.
            shard = qe.EdgeShard.create(
                str(tmp),
                qe.EdgeConfig(
                    vectors={_VEC: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)},
                    hnsw_config=qe.HnswIndexConfig(
                        m=16, ef_construct=64, full_scan_threshold=10_000, payload_m=payload_m
                    ),
                    quantization_config=qe.ScalarQuantizationConfig(
                        type=qe.ScalarType.Int8, quantile=0.99, always_ram=True
                    ),
                    optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
                    wal_enabled=False,
                ),
            )
            # payload_m builds extra HNSW links inside each category, so a search filtered to a few
            # categories walks their own sub-graphs instead of skipping through the global one.
            keyword = qe.KeywordIndexParams(is_tenant=True) if payload_m else qe.PayloadSchemaType.Keyword
            shard.update(qe.UpdateOperation.create_field_index(_KEY, keyword))
            t0 = time.perf_counter()
            sums = np.zeros((len(keys), dim), dtype=np.float64)
            chunk = 5000
            for start in range(0, n, chunk):
                lab = labels[start : start + chunk]
                x = l2_normalise(centres[lab] + noise * rng.standard_normal((len(lab), dim)).astype(np.float32))
                np.add.at(sums, lab, x)
                matrix[start : start + len(lab)] = x
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
            build_s = time.perf_counter() - t0
            protos = l2_normalise(sums.astype(np.float32))
            cats = CategoryIndex(None, keys, np.array([cat_sizes[c] for c in keys]), protos, protos, protos)
            # Queries: fresh samples of the categories, chosen in proportion to their size.
            q_lab = labels[rng.integers(0, n, size=queries)]
            qs = l2_normalise(centres[q_lab] + noise * rng.standard_normal((queries, dim)).astype(np.float32))
            params = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=2.0))
            for q in qs[:10]:  # warm-up: first touches of the index pages are not what a server sees
                shard.query(qe.QueryRequest(limit=k, query=qe.Query.Nearest(q.tolist(), using=_VEC), params=params))
            flat_ms, hier_ms, l1_ms, fractions, overlap, cat_hit = [], [], [], [], [], []
            exact_flat_ms, exact_hier_ms = [], []
            for i, q in enumerate(qs):
                ql = q.tolist()
                t = time.perf_counter()
                flat = shard.query(qe.QueryRequest(limit=k, query=qe.Query.Nearest(ql, using=_VEC), params=params))
                flat_ms.append((time.perf_counter() - t) * 1000)
                t = t_l1_start = time.perf_counter()
                chosen = select_categories(protos @ q, cats, level1, min_products=k)
                t_l1 = time.perf_counter()
                flt = qe.Filter(must=[qe.FieldCondition(key=_KEY, match=qe.MatchAny(any=chosen.kept))])
                hier = shard.query(
                    qe.QueryRequest(limit=k, query=qe.Query.Nearest(ql, using=_VEC), filter=flt, params=params)
                )
                hier_ms.append((time.perf_counter() - t) * 1000)
                l1_ms.append((t_l1 - t) * 1000)
                fractions.append(chosen.searched_fraction)
                cat_hit.append(keys[q_lab[i]] in chosen.kept)
                overlap.append(len({p.id for p in flat} & {p.id for p in hier}) / k)
                # Exact (brute-force) search, the single-stage baseline of the reference paper.
                t = time.perf_counter()
                top_k_indices(matrix @ q, k)
                exact_flat_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                kept_idx = [cats.position[c] for c in chosen.kept]
                scores = np.concatenate([matrix[bounds[c] : bounds[c + 1]] @ q for c in kept_idx])
                top_k_indices(scores, k)
                exact_hier_ms.append((time.perf_counter() - t) * 1000 + (t_l1 - t_l1_start) * 1000)
                report(f"synthetic {n:,}: queries", i + 1, queries)
            f, h = latency_percentiles(flat_ms), latency_percentiles(hier_ms)
            rows.append(
                {
                    "n": n,
                    "categories": len(keys),
                    "flat_p50_ms": round(f["latency_ms_p50"], 3),
                    "flat_p95_ms": round(f["latency_ms_p95"], 3),
                    "hier_p50_ms": round(h["latency_ms_p50"], 3),
                    "hier_p95_ms": round(h["latency_ms_p95"], 3),
                    "level1_p50_ms": round(float(np.median(l1_ms)), 3),
                    "speedup_p50": round(f["latency_ms_p50"] / h["latency_ms_p50"], 2),
                    "exact_flat_p50_ms": round(float(np.median(exact_flat_ms)), 3),
                    "exact_hier_p50_ms": round(float(np.median(exact_hier_ms)), 3),
                    "exact_speedup_p50": round(float(np.median(exact_flat_ms) / np.median(exact_hier_ms)), 2),
                    "searched_fraction": round(float(np.mean(fractions)), 4),
                    "category_recall": round(float(np.mean(cat_hit)), 4),
                    "top10_overlap_with_flat": round(float(np.mean(overlap)), 4),
                    "build_s": round(build_s, 1),
                    "synthetic": True,
                }
            )
            shard.close()
            del matrix
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            gc.collect()
    return rows


def write_report(
    results: dict[str, Any], reports_dir: Path, name: str = "hierarchical_bench"
) -> tuple[Path, Path, Path | None]:
    """Write ``name.json``, ``name.md`` and the plot ``name.png`` (latency against catalogue size, both modes).

    ``results`` holds ``machine``, ``scaling`` (rows of :func:`bench_scaling`) and optionally
    ``eval`` (the report of :func:`eval.retrieval_eval.evaluate` on the real catalogue).
    """
    import json

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
        from eval.retrieval_eval import format_table

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
