"""``tandem bench``: the benchmarks behind ``make bench``, written to ``eval/reports/``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from api.console import CliError, out, progress_bar, staged_progress
from api.settings import Settings, get_settings


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise CliError(f"sizes must be comma-separated integers, got {text!r}") from exc


def bench(
    reports: Annotated[Path, typer.Option("--reports", help="Where reports go.")] = Path("eval/reports"),
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Catalogue products to index.")] = None,
    vector_sizes: Annotated[str, typer.Option("--vector-sizes", help="Synthetic sizes, Edge vs NumPy.")] = (
        "10000,100000,1000000"
    ),
    hier_sizes: Annotated[str, typer.Option("--hier-sizes", help="Synthetic sizes, hierarchical vs flat.")] = (
        "44072,200000,1000000"
    ),
    queries: Annotated[int, typer.Option("--queries", min=1, help="Queries per measurement.")] = 200,
    eval_queries: Annotated[int, typer.Option("--eval-queries", min=1, help="Photo queries for the eval.")] = 1000,
    only: Annotated[str | None, typer.Option("--only", help="retrieval, eval or scaling")] = None,
) -> None:
    """Indexing throughput, query latency, Qdrant Edge vs NumPy, hierarchical vs flat (real and synthetic)."""
    from eval import bench_hierarchical, bench_retrieval

    settings = get_settings()
    if only not in (None, "retrieval", "eval", "scaling"):
        raise CliError(f"--only takes retrieval, eval or scaling, not {only!r}")
    vector_ns, hier_ns = _sizes(vector_sizes), _sizes(hier_sizes)
    if only in (None, "retrieval"):
        with progress_bar() as bar:
            res = bench_retrieval.run(
                settings, limit=limit, sizes=vector_ns, queries=queries, reports_dir=reports, progress=bar
            )
        out.print(f"wrote {res['report']['markdown']}")
    machine = bench_retrieval.machine_info()
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    if only in (None, "eval"):
        report = _real_eval(settings, eval_queries)
        if report is not None:
            _, md, _ = bench_hierarchical.write_report(
                {"generated_at": stamp, "machine": machine, "eval": report}, reports, "hierarchical_eval"
            )
            out.print(f"wrote {md}")
    if only in (None, "scaling"):
        from retrieval.catalogue import load_catalogue

        cat = load_catalogue(settings.catalogue.path, settings.catalogue.columns, check_images=False)
        real_sizes = dict(cat.counts_per_level()[-1])
        with staged_progress() as progress:
            rows = bench_hierarchical.bench_scaling(
                real_sizes,
                sizes=hier_ns,
                queries=queries,
                level1=settings.retrieval.level1.model_copy(update={"representation": "prototype"}),
                work_dir=settings.home,
                progress=progress,
            )
        notes = [
            "Level 1 uses prototypes here (synthetic categories have no names); the real-catalogue evaluation"
            " (hierarchical_eval.md) uses the configured level 1: category-name embeddings and prototypes.",
        ]
        results = {"generated_at": stamp, "machine": machine, "scaling": rows, "notes": notes}
        _, md, _ = bench_hierarchical.write_report(results, reports, "hierarchical_bench")
        out.print(f"wrote {md}")


def _real_eval(settings: Settings, n: int) -> dict[str, object] | None:
    """Hierarchical vs flat on buyer-style photo queries of the real catalogue (needs the main index)."""
    from api.cli_eval import holdout_products
    from api.components import build_retriever, build_store
    from eval.queries import make_photo_queries
    from eval.retrieval_eval import evaluate, load_queries

    qdir = settings.home / "eval" / "queries"
    if not (qdir / "products.csv").is_file():
        make_photo_queries(holdout_products(settings, n), qdir, mapping=settings.catalogue.columns)
    store = build_store(settings)
    try:
        if store.manifest() is None:
            out.print("no index yet: skipping the real-catalogue evaluation (run `make run` or `tandem index` first)")
            return None
        hier = build_retriever(settings, store)
        q = load_queries(qdir / "products.csv", qdir / "images", settings.catalogue.columns)
        with progress_bar() as bar:
            task = bar.add_task("evaluating photo queries", total=len(q.products))
            report = evaluate(hier, q, limits=settings.images, progress=lambda i: bar.advance(task, i))
    finally:
        store.close()
    report["skipped"] = len(report["skipped"])
    out.print(json.dumps({m: report[m].get("ndcg@10") for m in ("hierarchical", "flat")}))
    return report
