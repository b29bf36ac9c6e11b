"""The ``tandem`` command line.

Every error Tandem expects (bad input, missing index, unreadable image) prints one
line to stderr and exits non-zero; ``TANDEM_DEBUG=1`` shows tracebacks instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from api.settings import Settings, get_settings

app = typer.Typer(
    name="tandem",
    help="Tandem: multimodal product recommendations for B2B buyers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
catalogue_app = typer.Typer(help="Inspect a product catalogue.", no_args_is_help=True)
app.add_typer(catalogue_app, name="catalogue")

out = Console()
err = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """A user-facing error of the CLI itself (bad option combination)."""


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


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
    for issue in cat.issues[:20]:
        err.print(f"skipped: {issue}", markup=False, highlight=False)


def run_index(settings: Settings, catalog: Path, limit: int | None, rebuild: bool) -> None:
    from api.components import build_image_encoder, build_store, build_text_encoder
    from retrieval.catalogue import load_catalogue
    from retrieval.indexer import build_index

    cat = load_catalogue(catalog, settings.catalogue.columns, limit=limit)
    for issue in cat.issues[:20]:
        err.print(f"skipped: {issue}", markup=False, highlight=False)
    if len(cat.issues) > 20:
        err.print(f"... and {len(cat.issues) - 20} more skipped row(s)")
    text_encoder = build_text_encoder(settings)
    image_encoder = build_image_encoder(settings)
    store = build_store(settings)
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
    for issue in report.failed[:20]:
        err.print(f"failed: {issue}", markup=False, highlight=False)
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
    settings: Settings, text: str | None, image: str | None, k: int, as_json: bool, *, title: str | None = None
) -> None:
    from api.components import build_image_encoder, build_store, build_text_encoder
    from api.image_source import open_image_source
    from retrieval.search import Retriever, SearchQuery

    if not text and not image:
        raise CliError("give --text, --image, or both")
    pil = open_image_source(image, settings.images) if image else None
    store = build_store(settings)
    try:
        retriever = Retriever(store, build_text_encoder(settings), build_image_encoder(settings))
        hits = retriever.search(SearchQuery(text=text, image=pil), k=k)
    finally:
        store.close()
    if as_json:
        sys.stdout.write(json.dumps({"items": [h.as_dict() for h in hits]}, ensure_ascii=False) + "\n")
        return
    table = Table(title=title or f"top {k} for " + " + ".join(x for x in (repr(text) if text else "", image) if x))
    for col in ("#", "product_id", "title", "category", "score", "image"):
        table.add_column(col, overflow="fold")
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), h.product_id, h.title, " > ".join(h.category), f"{h.score:.4f}", h.image or "")
    out.print(table)


@app.command("search")
def search(
    text: Annotated[str | None, typer.Option("--text", help="What the buyer is looking for, in words.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="A photo: local path or http(s) URL.")] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=1000, help="How many products.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: {items: [...]}.")] = False,
    mode: Annotated[str, typer.Option("--mode", help="Search mode: flat (whole catalogue).")] = "flat",
) -> None:
    """Search the indexed catalogue by text, photo, or both."""
    if mode != "flat":
        raise CliError(f"unknown --mode {mode!r}; available: flat")
    run_search(get_settings(), text, image, k, as_json)


@app.command("demo")
def demo(
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Index only the first N products.")] = None,
) -> None:
    """The main job on embedded defaults: index the demo catalogue, then answer a text and a photo query."""
    from retrieval.catalogue import load_catalogue

    settings = get_settings()
    catalog = settings.catalogue.path
    out.rule("[bold]Tandem demo[/bold]")
    out.print(
        f"catalogue: {catalog.resolve()}   data: {settings.home.resolve()}   store: "
        f"{settings.qdrant.url or 'Qdrant Edge (embedded)'}"
    )
    run_index(settings, catalog, limit, rebuild=False)
    run_search(settings, "red kurta for women", None, 5, False, title="text query: 'red kurta for women'")
    sample = load_catalogue(catalog, settings.catalogue.columns, limit=3).products[2]
    run_search(
        settings,
        None,
        str(sample.image_path),
        5,
        False,
        title=f"photo query: {sample.image_path} ({sample.title})",
    )


def main() -> None:
    """Console-script entry point: maps Tandem's errors to one line on stderr and exit code 1."""
    from pydantic import ValidationError

    from retrieval.errors import RetrievalError

    debug = os.environ.get("TANDEM_DEBUG") == "1"
    try:
        app()
    except (RetrievalError, CliError) as exc:
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
