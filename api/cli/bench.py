"""``tandem bench``: the benchmarks behind ``make bench``, written to ``eval/reports/``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from api.cli.fairness import fairness
from api.cli.fuzz import fuzz as bench_fuzz
from api.console import CliError, out, progress_bar, shown_path, staged_progress
from api.settings import Settings, get_settings


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise CliError(f"sizes must be comma-separated integers, got {text!r}") from exc


bench_app = typer.Typer(
    help="Benchmarks, written to eval/reports/: retrieval (no subcommand), chat latency (chat).",
    invoke_without_command=True,
    no_args_is_help=False,
)


@bench_app.callback()
def bench(
    ctx: typer.Context,
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
    if ctx.invoked_subcommand is not None:
        return
    from api.components import build_image_encoder, build_text_encoder
    from eval import bench_hierarchical, bench_retrieval
    from eval.machine import machine_info

    settings = get_settings()
    if only not in (None, "retrieval", "eval", "scaling"):
        raise CliError(f"--only takes retrieval, eval or scaling, not {only!r}")
    vector_ns, hier_ns = _sizes(vector_sizes), _sizes(hier_sizes)
    if only in (None, "retrieval"):
        with progress_bar() as bar:
            res = bench_retrieval.run(
                settings,
                lambda: (build_text_encoder(settings), build_image_encoder(settings)),
                limit=limit,
                sizes=vector_ns,
                queries=queries,
                reports_dir=reports,
                progress=bar,
            )
        out.print(f"wrote {res['report']['markdown']}")
    machine = machine_info()
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
            " (hierarchical_eval.md) uses the configured level 1: the nearest products' category vote with a soft"
            " category prior.",
        ]
        results = {"generated_at": stamp, "machine": machine, "scaling": rows, "notes": notes}
        _, md, _ = bench_hierarchical.write_report(results, reports, "hierarchical_bench")
        out.print(f"wrote {md}")


def _real_eval(settings: Settings, n: int) -> dict[str, object] | None:
    """Hierarchical vs flat on buyer-style photo queries of the real catalogue (needs the main index)."""
    from api.cli.evaluate import holdout_products
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


@contextmanager
def _served_product(settings: Settings) -> Iterator[str]:
    """The product as ``make run`` serves it (API in a uvicorn thread, embedded LLM worker beside it): its URL."""
    import threading
    import time

    import uvicorn

    from api.http.app import create_app
    from api.worker.embedded import embedded_llm_worker

    with embedded_llm_worker(settings) as worker:
        settings = settings.model_copy(update={"llm": settings.llm.model_copy(update={"workers": [worker]}),
                                               "api": settings.api.model_copy(update={"keys": []})})  # fmt: skip
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_config=None,
                                               access_log=False))  # fmt: skip
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise CliError("the API did not start")
            time.sleep(0.1)
        try:
            yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join(timeout=15)


def _advance(bar: Any, task: Any, done: int, total: int) -> None:
    bar.update(task, completed=done)


@bench_app.command("chat")
def bench_chat(
    turns: Annotated[int, typer.Option("--turns", min=2, help="Streamed chat turns (the first is not counted).")] = 60,
    reports: Annotated[Path, typer.Option("--reports", help="Where chat_latency.{json,md,png} go.")] = Path(
        "eval/reports"
    ),
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline/--no-baseline",
            help="Also run the same turns with the prefix cache off, and with whole-sentence explanations, side by"
            " side.",
        ),
    ] = True,
    rounds: Annotated[
        int,
        typer.Option("--rounds", min=1, help="Split the turns into rounds, the configurations alternating each round."),
    ] = 1,
) -> None:
    """Chat latency on the real models: time to the first product card and the first explanation token, p50/p95."""
    from eval.bench_chat import run_benchmark, summarise, write_chat_report
    from finetune.buyers import BuyerConfig
    from finetune.ranker_cases import ensure_buyers
    from retrieval.catalogue import load_catalogue

    settings = get_settings()
    cat = load_catalogue(settings.catalogue.path, settings.catalogue.columns, check_images=False)
    buyers = ensure_buyers(cat, settings.buyers_dir, BuyerConfig())["test"]
    models = {"base": settings.llm.base, "ranker": shown_path(settings.ranker_adapter_dir())}
    runs = [*(_chat_baselines(settings) if baseline else []), ("as configured", "", settings)]
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in runs}
    per_round = max(2, -(-turns // rounds))
    for r in range(rounds):
        # Alternated, round by round: this machine's speed drifts by tens of percent over minutes, and a drift
        # must not pass for a difference between configurations.
        for name, _, run_settings in runs if r % 2 == 0 else runs[::-1]:
            with _served_product(run_settings) as url, progress_bar() as bar:
                task = bar.add_task(f"chat turns ({name}, round {r + 1} of {rounds})", total=per_round)
                measured = run_benchmark(url, cat, buyers, models, turns=per_round, start=r * per_round,
                                         progress=partial(_advance, bar, task))  # fmt: skip
            rows[name] += measured["rows"]
    report = summarise(rows["as configured"], models)
    report["rounds"] = rounds
    report["baselines"] = []
    for name, env, _ in runs[:-1]:
        base = summarise(rows[name], models)
        report["baselines"].append(
            {
                "name": name,
                "settings": env,
                **{k: base[k] for k in ("turns", "first_card_ms", "first_token_ms", "done_ms")},
            }
        )
    write_chat_report(report, reports)
    card, token = report["first_card_ms"], report["first_token_ms"]
    out.print(f"first card p50 {card['p50']} ms, p95 {card['p95']} ms; first token p50 {token['p50']} ms, "
              f"p95 {token['p95']} ms")  # fmt: skip


def _chat_baselines(settings: Settings) -> list[tuple[str, str, Settings]]:
    """(name, the settings that make it, settings) of each configuration the chat bench compares against."""
    llm, chat = settings.llm, settings.chat
    runs = []
    if llm.prefix_cache_tokens:
        no_cache = settings.model_copy(update={"llm": llm.model_copy(update={"prefix_cache_tokens": 0})})
        runs.append(("prefix cache off", "TANDEM_LLM__PREFIX_CACHE_TOKENS=0", no_cache))
    if chat.stream_words:
        whole = settings.model_copy(update={"chat": chat.model_copy(update={"stream_words": False})})
        runs.append(("whole sentences", "TANDEM_CHAT__STREAM_WORDS=false", whole))
    return runs


_FORWARD = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@bench_app.command("loadtest", context_settings=_FORWARD, add_help_option=False)
def bench_loadtest(ctx: typer.Context) -> None:
    """The REST API under Locust load: images/s, latency, errors (``--help`` lists its options)."""
    from api.components import build_image_encoder
    from eval.loadtest.cli import main as loadtest_main

    settings = get_settings()
    code = loadtest_main(list(ctx.args), settings=settings, build_encoder=lambda: build_image_encoder(settings))
    raise typer.Exit(code)


@bench_app.command("llm", context_settings=_FORWARD, add_help_option=False)
def bench_llm(ctx: typer.Context) -> None:
    """The LLM dispatcher against real worker processes on a SIMULATED model (``--help`` lists its options)."""
    from eval.bench_llm.cli import main as bench_llm_main

    raise typer.Exit(bench_llm_main(list(ctx.args), home=get_settings().home))


@bench_app.command("soak")
def bench_soak(
    minutes: Annotated[float, typer.Option("--minutes", min=0.5, help="How long the soak runs.")] = 30.0,
    load: Annotated[float, typer.Option("--load", min=0.05, max=1.0, help="Share of the measured capacity.")] = 0.5,
    capacity_s: Annotated[
        float, typer.Option("--capacity-s", min=5.0, help="Seconds to measure the REST kinds' capacity.")
    ] = 30.0,
    chat_capacity_s: Annotated[
        float, typer.Option("--chat-capacity-s", min=10.0, help="Seconds to measure the chat kinds' capacity.")
    ] = 120.0,
    reports: Annotated[Path, typer.Option("--reports", help="Where soak.* and reliability.* go.")] = Path(
        "eval/reports"
    ),
) -> None:
    """Mixed traffic (photo and text recommendations, chat and streamed chat turns, bad requests) for many minutes."""
    import tempfile

    from eval.machine import machine_info
    from eval.process import ServiceError
    from eval.reliability import write_reliability
    from eval.soak import SoakConfig, run_soak, write_report

    settings = get_settings()
    cfg = SoakConfig(minutes=minutes, load=load, capacity_s=capacity_s, chat_capacity_s=chat_capacity_s)
    with tempfile.TemporaryDirectory(prefix="tandem-soak-") as work, progress_bar() as bar:
        tasks: dict[str, Any] = {}

        def tick(stage: str, done: float, total: float) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        try:
            results = run_soak(settings, cfg, work_dir=Path(work), tick=tick)
        except ServiceError as exc:
            raise CliError(str(exc)) from exc
    summary = write_report(results, reports, machine_info())
    write_reliability(reports)
    out.print(
        f"{summary['requests']} requests at {summary['rate_rps']} /s (capacity {summary['capacity_rps']} /s):"
        f" rss growth {summary['rss_growth']}, unexpected {summary['unexpected']}, p99 first/last minute"
        f" {summary['p99_ms_first_minute']} / {summary['p99_ms_last_minute']} ms; report: {reports / 'soak.md'}"
    )


bench_app.command("fairness")(fairness)
bench_app.command("fuzz")(bench_fuzz)
