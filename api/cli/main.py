"""The ``tandem`` command line.

Every error Tandem expects (bad input, missing index, unreadable image) prints one
line to stderr and exits non-zero; ``TANDEM_DEBUG=1`` shows tracebacks instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from api.cli.bench import bench_app
from api.cli.evaluate import eval_app
from api.cli.experiment import experiment_app
from api.cli.train import train_app
from api.cli.worker import worker
from api.console import CliError, err, out, progress_bar, report_issues
from api.settings import Settings, get_settings
from retrieval.hierarchical import SearchMode, SearchResult

app = typer.Typer(
    name="tandem",
    help="Tandem: multimodal product recommendations for B2B buyers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
catalogue_app = typer.Typer(help="Inspect a product catalogue.", no_args_is_help=True)
app.add_typer(catalogue_app, name="catalogue")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(experiment_app, name="experiment")
app.add_typer(bench_app, name="bench")
app.command("worker")(worker)


def _catalogue_dir(settings: Settings, catalog: Path | None) -> Path:
    return catalog if catalog is not None else settings.catalogue.path


@catalogue_app.command("stats")
def catalogue_stats(
    catalog: Annotated[
        Path | None, typer.Option("--catalog", help="Catalogue folder (products.csv + images/).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print product counts per category level, and what was skipped."""
    from retrieval.catalogue import load_catalogue

    settings = get_settings()
    cat = load_catalogue(_catalogue_dir(settings, catalog), settings.catalogue.columns)
    levels = cat.counts_per_level()
    if as_json:
        body = {
            "products": len(cat),
            "skipped": len(cat.issues),
            "levels": [
                {"level": name, "categories": len(c), "counts": dict(c.most_common())}
                for name, c in zip(cat.level_names, levels, strict=False)
            ],
        }
        out.print_json(json.dumps(body))
        return
    out.print(f"[bold]{len(cat)}[/bold] products from {cat.root} ({len(cat.issues)} row(s) skipped)")
    for name, counter in zip(cat.level_names, levels, strict=False):
        sizes = sorted(counter.values())
        table = Table(title=f"{name}: {len(counter)} categories (smallest {sizes[0]}, median {sizes[len(sizes) // 2]})")
        table.add_column("category")
        table.add_column("products", justify="right")
        for key, n in counter.most_common(15):
            table.add_row(key, str(n))
        if len(counter) > 15:
            table.add_row(f"... {len(counter) - 15} more", "")
        out.print(table)
    report_issues("skipped", cat.issues)


def run_index(
    settings: Settings, catalog: Path, limit: int | None, rebuild: bool, *, rebuild_if_stale: bool = False
) -> None:
    """Index ``catalog``; an index made by other encoders is refused, or rebuilt with ``rebuild_if_stale``."""
    from api.components import build_image_encoder, build_store, build_text_encoder
    from retrieval.catalogue import load_catalogue
    from retrieval.encoders import TextEncoder
    from retrieval.errors import EncoderMismatchError
    from retrieval.indexer import build_index
    from retrieval.text_cache import PrecomputedTextEncoder, cached_text_vectors

    cat = load_catalogue(catalog, settings.catalogue.columns, limit=limit)
    report_issues("skipped", cat.issues)
    text_encoder: TextEncoder = build_text_encoder(settings)
    texts = [p.text() for p in cat.products]
    cached = cached_text_vectors(text_encoder, texts, settings.cache_dir)
    if cached is not None:  # the image tower's training already embedded these texts
        text_encoder = PrecomputedTextEncoder(text_encoder, texts, cached)
    image_encoder = build_image_encoder(settings)
    store = build_store(settings)
    existing = store.manifest()
    if existing is not None and not rebuild and rebuild_if_stale:
        try:
            existing.check_encoders(text_encoder=text_encoder.model_id, image_encoder=image_encoder.model_id)
        except EncoderMismatchError:
            out.print(
                f"the index was built with {existing.image_encoder} / {existing.text_encoder}; "
                f"rebuilding it with {image_encoder.model_id} / {text_encoder.model_id}"
            )
            rebuild = True
    try:
        with progress_bar() as bar:
            task = bar.add_task("indexing", total=len(cat))
            report = build_index(
                cat,
                store,
                text_encoder,
                image_encoder,
                limits=settings.images,
                batch_size=settings.encoders.batch_size,
                rebuild=rebuild,
                progress=lambda n: bar.advance(task, n),
            )
    finally:
        store.close()
    report_issues("failed", report.failed)
    out.print(
        f"indexed {report.indexed}, already present {report.skipped_existing}, failed {len(report.failed)} "
        f"of {report.total} products in {report.seconds:.1f}s "
        f"(images {report.images_per_s:.0f}/s, texts {report.texts_per_s:.0f}/s)"
    )


@app.command("index")
def index(
    catalog: Annotated[
        Path | None, typer.Option("--catalog", help="Catalogue folder (products.csv + images/).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Index only the first N valid products.")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Drop the existing index and start again.")] = False,
) -> None:
    """Load a catalogue and index it into Qdrant (resumable: re-running skips what is done)."""
    settings = get_settings()
    run_index(settings, _catalogue_dir(settings, catalog), limit, rebuild)


def run_search(
    settings: Settings,
    text: str | None,
    image: str | None,
    k: int,
    as_json: bool,
    *,
    mode: SearchMode = "hierarchical",
    title: str | None = None,
    pool: int | None = None,
    mmr_lambda: float | None = None,
    diversity: float | None = None,
) -> None:
    from api.cli.image_source import open_image_source
    from api.components import build_retriever, build_store
    from rag.diversity import DiversityCalibration
    from rag.errors import RagError
    from rag.recommend import Recommender
    from retrieval.search import SearchQuery

    if not text and not image:
        raise CliError("give --text, --image, or both")
    if mmr_lambda is not None and diversity is not None:
        raise CliError("give --mmr or --diversity, not both")
    pil = open_image_source(image, settings.images) if image else None
    store = build_store(settings)
    try:
        retriever = build_retriever(settings, store)

        async def search(query: SearchQuery, pool: int, mode: SearchMode) -> SearchResult:
            return retriever.search(query, k=pool, mode=mode)

        calibration = DiversityCalibration.load(settings.diversity_calibration_path)
        recommender = Recommender(
            search, vectors=lambda ids, using: store.vectors(ids, using=using), calibration=calibration
        )
        rec = asyncio.run(recommender.recommend(SearchQuery(text=text, image=pil), top_k=k, mode=mode,
                                                pool=max(pool, k) if pool else None, mmr_lambda=mmr_lambda,
                                                diversity=diversity))  # fmt: skip
    except RagError as exc:
        raise CliError(str(exc)) from exc
    finally:
        store.close()
    hits, result = rec.hits, rec.result
    reached = {**asdict(rec.diversity), "settings": rec.settings}
    if as_json:
        body = {"items": [h.as_dict() for h in hits], "diversity": reached}
        sys.stdout.write(json.dumps(body, ensure_ascii=False) + "\n")
        return
    what = " + ".join(x for x in (repr(text) if text else "", image or "") if x)
    table = Table(title=title or f"top {k} for {what}")
    for col in ("#", "product_id", "title", "category", "score", "image"):
        table.add_column(col, overflow="fold")
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), h.product_id, h.title, " > ".join(h.category), f"{h.score:.4f}", h.image or "")
    out.print(table)
    ild_image = reached["ild_image"]
    out.print(f"diversity: ILD@{len(hits)} image {ild_image if ild_image is not None else '-'}, text "
              f"{reached['ild_text'] if reached['ild_text'] is not None else '-'}, category {reached['ild_category']}"
              f" ({reached['settings']})")  # fmt: skip
    if result.level1 is not None:
        kept = ", ".join(result.level1.kept[:5]) + (" ..." if len(result.level1.kept) > 5 else "")
        out.print(
            f"{mode}: searched {result.level1.searched_fraction:.1%} of the catalogue in "
            f"{len(result.level1.kept)} categories ({kept})"
        )


@app.command("search")
def search(
    text: Annotated[str | None, typer.Option("--text", help="What the buyer is looking for, in words.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="A photo: local path or http(s) URL.")] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=1000, help="How many products.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: {items: [...]}.")] = False,
    mode: Annotated[
        str | None, typer.Option("--mode", help="hierarchical (category-pruned) or flat (whole catalogue).")
    ] = None,
    pool: Annotated[int | None, typer.Option("--pool", min=1, max=1000, help="Candidates before re-ranking.")] = None,
    mmr: Annotated[
        float | None, typer.Option("--mmr", min=0.0, max=1.0, help="MMR λ: 1 = relevance order, 0 = most diverse.")
    ] = None,
    diversity: Annotated[
        float | None, typer.Option("--diversity", min=0.0, max=1.0, help="Target diversity (calibrated).")
    ] = None,
) -> None:
    """Search the indexed catalogue by text, photo, or both; prints the list's diversity (ILD) too."""
    settings = get_settings()
    chosen = mode or settings.retrieval.mode
    if chosen not in ("hierarchical", "flat"):
        raise CliError(f"unknown --mode {chosen!r}; choose hierarchical or flat")
    run_search(settings, text, image, k, as_json, mode=chosen, pool=pool, mmr_lambda=mmr,  # type: ignore[arg-type]
               diversity=diversity)  # fmt: skip


def prepare(settings: Settings, limit: int | None) -> None:
    """Build what is missing: the domain image tower (when it is the image encoder), then the index."""
    from api.cli.train import run_train_clip
    from api.components import tower_is_trained

    uses_own_tower = settings.encoders.image_checkpoint is None and settings.encoders.image_model is None
    if uses_own_tower and not tower_is_trained(settings):
        out.print("no domain image tower yet: training it on the catalogue first (once; cached in TANDEM_HOME)")
        run_train_clip(settings, limit=limit)
    run_index(settings, settings.catalogue.path, limit, rebuild=False, rebuild_if_stale=True)


@app.command("demo")
def demo(
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Index only the first N products.")] = None,
) -> None:
    """Train the image tower if missing, index, answer a text and a photo query in the terminal."""
    from retrieval.catalogue import load_catalogue

    settings = get_settings()
    catalog = settings.catalogue.path
    out.rule("[bold]Tandem demo[/bold]")
    out.print(
        f"catalogue: {catalog.resolve()}   data: {settings.home.resolve()}   store: "
        f"{settings.qdrant.url or 'Qdrant Edge (embedded)'}"
    )
    prepare(settings, limit)
    mode = settings.retrieval.mode
    run_search(settings, "red kurta for women", None, 5, False, mode=mode, title="text query: 'red kurta for women'")
    sample = load_catalogue(catalog, settings.catalogue.columns, limit=3).products[2]
    run_search(
        settings,
        None,
        str(sample.image_path),
        5,
        False,
        mode=mode,
        title=f"photo query: {sample.image_path} ({sample.title})",
    )


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default TANDEM_API__HOST).")] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=0, max=65535, help="Port (default TANDEM_API__PORT).")
    ] = None,
    prepare_first: Annotated[
        bool, typer.Option("--prepare", help="First index the catalogue if needed (and train a tower if none).")
    ] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="With --prepare: index the first N.")] = None,
    embedded_llm: Annotated[
        bool,
        typer.Option(
            "--embedded-llm/--no-embedded-llm",
            help="With no TANDEM_LLM__WORKERS: serve both models from Tandem's own worker, started beside the API.",
        ),
    ] = True,
) -> None:
    """Serve the API and the web chat (FastAPI + uvicorn) until Ctrl-C."""
    from contextlib import ExitStack

    from api.http.server import serve as run_server
    from api.worker.embedded import embedded_llm_worker

    settings = get_settings()
    with ExitStack() as stack:
        if embedded_llm and not settings.llm.workers:
            # Started first: the worker converts and loads its model while the index is prepared, and the API
            # serves recommendations without waiting for it.
            worker = stack.enter_context(embedded_llm_worker(settings))
            settings = settings.model_copy(update={"llm": settings.llm.model_copy(update={"workers": [worker]})})
        if prepare_first:
            prepare(settings, limit)
        run_server(settings, host or settings.api.host, settings.api.port if port is None else port)


def main() -> None:
    """Console-script entry point: maps Tandem's errors to one line on stderr and exit code 1."""
    from pydantic import ValidationError

    from llms.errors import LLMError
    from retrieval.errors import RetrievalError

    debug = os.environ.get("TANDEM_DEBUG") == "1"
    try:
        app()
    except (RetrievalError, LLMError, CliError) as exc:
        if debug:
            raise
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(1)
    except ValidationError as exc:
        if debug:
            raise
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        err.print(f"error: invalid setting {where}: {first['msg']}", markup=False, highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # last resort: a user never sees a traceback
        if debug:
            raise
        err.print(f"error: unexpected {exc.__class__.__name__}: {exc} (TANDEM_DEBUG=1 shows details)", markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
