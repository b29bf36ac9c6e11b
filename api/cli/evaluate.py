"""``tandem eval ...``: measure retrieval the way the reference paper does, hierarchical against flat."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from api.console import CliError, out, progress_bar, report_issues, shown_path
from api.settings import Settings, get_settings
from retrieval.catalogue import Catalogue, Product

if TYPE_CHECKING:
    from finetune.buyers import Buyer
    from finetune.ranking_data import RankingCase

eval_app = typer.Typer(help="Evaluate retrieval quality and speed.", no_args_is_help=True)


def holdout_products(settings: Settings, n: int, seed: int = 0) -> list[Product]:
    """Products the image tower never trained on (its recorded held-out split), sampled deterministically.

    A tower trained on another catalogue never saw any of this one's products: all of them qualify.
    """
    import random

    from finetune.train_tower import holdout_ids
    from retrieval.catalogue import load_catalogue

    cat = load_catalogue(settings.catalogue.path, settings.catalogue.columns, check_images=False)
    from api.components import trained_tower_dir

    tower = trained_tower_dir(settings)
    recorded = tower / "holdout_ids.json" if tower is not None else None
    held = (
        set(json.loads(recorded.read_text()))
        if recorded is not None and recorded.is_file()
        else holdout_ids([p.product_id for p in cat.products], 0.05)
    )
    meta = tower / "tandem_meta.json" if tower is not None else None
    trained_on = json.loads(meta.read_text()).get("catalogue") if meta is not None and meta.is_file() else None
    if trained_on and Path(trained_on).resolve() != Path(settings.catalogue.path).resolve():
        held = {p.product_id for p in cat.products}
    pool = [p for p in cat.products if p.product_id in held]
    random.Random(seed).shuffle(pool)
    return pool[:n]


@eval_app.command("make-queries")
def make_queries(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write products.csv + images/ into.")],
    n: Annotated[int, typer.Option("--n", min=1, help="How many query photos.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Write buyer-style photo queries (resized, cropped, re-compressed) of held-out catalogue products."""
    from eval.queries import make_photo_queries

    settings = get_settings()
    products = holdout_products(settings, n, seed)
    if not products:
        raise CliError("no held-out products to make queries from")
    with progress_bar() as bar:
        task = bar.add_task("making photo queries", total=len(products))
        csv_path = make_photo_queries(
            products, out_dir, mapping=settings.catalogue.columns, seed=seed, progress=lambda i: bar.advance(task, i)
        )
    out.print(f"wrote {len(products)} queries: {csv_path} and {out_dir / 'images'}")


@eval_app.command("retrieval")
def eval_retrieval(
    queries: Annotated[Path, typer.Option("--queries", help="CSV with the columns of products.csv.")],
    images: Annotated[Path, typer.Option("--images", help="Folder of query photos named <product_id>.jpg.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Cut-off K of the metrics.")] = 10,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    colour_attribute: Annotated[
        str, typer.Option("--colour-attribute", help="The catalogue's colour column (relevance grade 2).")
    ] = "base_colour",
) -> None:
    """Run photo queries in hierarchical and flat mode; print the metrics side by side.

    The catalogue and its columns are the configured ones (``TANDEM_CATALOGUE__PATH``,
    ``TANDEM_CATALOGUE__COLUMNS__*``); the query CSV has the catalogue's columns.
    """
    from api.components import build_retriever, build_store
    from eval.retrieval_eval import evaluate, load_queries

    settings = get_settings()
    if not queries.is_file():
        raise CliError(f"query CSV {queries} does not exist")
    if not images.is_dir():
        raise CliError(f"query image folder {images} does not exist")
    q = load_queries(queries, images, settings.catalogue.columns)
    report_issues("skipped query", q.issues)
    store = build_store(settings)
    try:
        hier = build_retriever(settings, store)
        with progress_bar() as bar:
            task = bar.add_task("evaluating", total=len(q.products))
            report = evaluate(hier, q, k=k, limits=settings.images, colour_attribute=colour_attribute,
                              progress=lambda i: bar.advance(task, i))  # fmt: skip
    finally:
        store.close()
    table = Table(title=f"retrieval on {report['queries']} photo queries (K={k})")
    table.add_column("metric")
    table.add_column("hierarchical", justify="right")
    table.add_column("flat", justify="right")
    for key in report["flat"]:
        table.add_row(key, f"{report['hierarchical'][key]:.4f}", f"{report['flat'][key]:.4f}")
    out.print(table)
    if report["skipped"]:
        out.print(f"{len(report['skipped'])} query(ies) skipped (missing or unreadable photo)")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        out.print(f"wrote {json_out}")


@eval_app.command("level1-sweep")
def eval_level1_sweep(
    queries: Annotated[Path, typer.Option("--queries", help="Query CSV from `tandem eval make-queries`.")] = Path(
        "var/eval/queries/products.csv"
    ),
    images: Annotated[Path, typer.Option("--images", help="Its photo folder.")] = Path("var/eval/queries/images"),
    report_dir: Annotated[Path, typer.Option("--report-dir", help="Write level1_sweep.md/json here.")] = Path(
        "eval/reports"
    ),
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Cut-off K of the metrics.")] = 10,
) -> None:
    """Sweep level-1 methods (names, prototypes, clusters, head, neighbours' vote, prior, depth): tune on half the
    queries, report on the other half."""
    import time
    from datetime import UTC, datetime

    from api.components import build_retriever, build_store, tower_holdout_ids
    from api.console import staged_progress
    from eval.level1_sweep import load_data, sweep, write_report
    from eval.machine import machine_info
    from eval.retrieval_eval import load_queries

    settings = get_settings()
    if not queries.is_file() or not images.is_dir():
        raise CliError(f"no queries at {queries} / {images}: run `tandem eval make-queries --out {queries.parent}`")
    q = load_queries(queries, images, settings.catalogue.columns)
    report_issues("skipped query", q.issues)
    t0 = time.perf_counter()
    held = tower_holdout_ids(settings)
    store = build_store(settings)
    try:
        hier = build_retriever(settings, store)
        cache = settings.cache_dir / f"level1-sweep-data-{len(q.products)}.npz"
        data = load_data(hier, q, exclude=held, cache=cache, limits=settings.images, k=k)
    finally:
        store.close()
    with staged_progress() as progress:
        best, table, tune, alone = sweep(data, hier.retriever.text_encoder, settings.cache_dir, progress=progress)
    context = {"machine": machine_info(), "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
               "queries": len(tune), "tune": int(tune.sum()), "test": int((~tune).sum()),
               "seconds": round(time.perf_counter() - t0), "without_own": alone}  # fmt: skip
    _, md = write_report(data, table, best, report_dir, context=context)
    out.print(f"chosen: {best.name} {best.config.model_dump()}; report: {md}")


def _test_cases(
    base: str | None, adapter: Path | None, buyers: int | None
) -> tuple[Path, Path, Catalogue, list[Buyer], dict[str, list[RankingCase]]]:
    """The models to evaluate (refused in one line when untrained) and both protocols' cases of the test buyers."""
    from api.components import build_retriever, build_store
    from api.console import staged_progress
    from finetune.buyers import BuyerConfig
    from finetune.ranker_cases import build_cases, ensure_buyers, retrieval_search
    from retrieval.catalogue import load_catalogue

    settings, base_dir, adapter_dir = _served_models(base, adapter)
    cat = load_catalogue(settings.catalogue.path, settings.catalogue.columns, check_images=False)
    test = ensure_buyers(cat, settings.buyers_dir, BuyerConfig())["test"][:buyers]
    store = build_store(settings)
    try:
        search = retrieval_search(build_retriever(settings, store), cat)
        with staged_progress() as progress:
            cases = {
                "one_of_20": build_cases(test, search, cat, "one_of_20", progress=progress),
                "full_list": build_cases(test, search, cat, "full_list", progress=progress),
            }
    finally:
        store.close()
    return base_dir, adapter_dir, cat, test, cases


@eval_app.command("ranker")
def eval_ranker(
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="Also write ranker_eval.md/json here (e.g. eval/reports).")
    ] = None,
    buyers: Annotated[
        int | None, typer.Option("--buyers", min=1, help="SYNTHETIC test buyers to evaluate on (default: all).")
    ] = None,
    base: Annotated[str | None, typer.Option("--base", help="Base model (default TANDEM_LLM__BASE).")] = None,
    adapter: Annotated[Path | None, typer.Option("--adapter", help="LoRA ranker (default: the one served).")] = None,
) -> None:
    """Ranker vs random order, retrieval order and the zero-shot base: 1-of-20 and full-list NDCG@10 / Recall@10."""
    import time

    from api.console import staged_progress
    from eval.ranker_eval import evaluate_cases, llm_ranker
    from finetune.buyers import CatalogueCodes
    from finetune.ranking_data import teacher_ranking
    from llms.in_process import InProcessClient
    from llms.worker.hf_engine import TransformersEngine
    from llms.worker.service import WorkerService

    t0 = time.perf_counter()
    base_dir, adapter_dir, cat, test, cases = _test_cases(base, adapter, buyers)
    engine = TransformersEngine.load(base_dir, {"tandem-ranker": adapter_dir})
    service = WorkerService(engine)
    llm = InProcessClient(service)
    rankers = {
        "base_zero_shot": llm_ranker(llm, service.base_name, cat),
        "lora": llm_ranker(llm, "tandem-ranker", cat),
    }
    teacher = partial(teacher_ranking, codes=CatalogueCodes(cat.products), catalogue=cat)
    with staged_progress() as progress:
        results = evaluate_cases(cases, rankers, references={"teacher": teacher}, progress=progress)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["synthetic_buyers"] = True
    table = Table(title=f"ranker on SYNTHETIC test buyers ({len(test)})")
    table.add_column("method")
    for protocol in ("one_of_20", "full_list"):
        table.add_column(f"{protocol} NDCG@10", justify="right")
        table.add_column(f"{protocol} R@10", justify="right")
    for method in ("random", "retrieval", "teacher", "base_zero_shot", "lora"):
        row = [method]
        for protocol in ("one_of_20", "full_list"):
            m = results[protocol].get(method, {})
            row += [f"{m.get('ndcg@10', 0):.4f}", f"{m.get('recall@10', 0):.4f}"]
        table.add_row(*row)
    out.print(table)
    out.print(f"rates (lora): {results['rates']}; cases: 1-of-20 {results['one_of_20']['cases']}, "
              f"full list {results['full_list']['cases']}")  # fmt: skip
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=2))
    if report_dir is not None:
        from eval.ranker_eval import write_report

        training = {}
        base_record = base_dir / "tandem_base.json"
        if base_record.is_file():
            b = json.loads(base_record.read_text())
            source = b.get("source", {})
            training["base model"] = (f"{b.get('upstream') or b.get('name')} ({b.get('license')}), "
                                      f"{b.get('parameters', 0) / 1e6:.1f}M parameters, from "
                                      f"{source.get('file_name')} sha256 {source.get('sha256', '')[:12]}…")  # fmt: skip
        ranker_record = adapter_dir / "tandem_ranker.json"
        if ranker_record.is_file():
            t = json.loads(ranker_record.read_text())
            loss = f"loss {t.get('first_loss')} -> {t.get('final_loss')}"
            training["LoRA ranker"] = (f"{t.get('examples')} conversations, {t.get('steps')} steps, "
                                       f"{t.get('seconds_train')} s on {t.get('device')} ({t.get('precision')}), "
                                       f"{loss}; {t.get('command')!r}")  # fmt: skip
        out.print(f"report: {write_report(results, report_dir, training)}")


@eval_app.command("ranker-probe")
def eval_ranker_probe(
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
    buyers: Annotated[int, typer.Option("--buyers", min=1, help="SYNTHETIC test buyers to probe on.")] = 300,
    base: Annotated[str | None, typer.Option("--base", help="Base model (default TANDEM_LLM__BASE).")] = None,
    adapter: Annotated[Path | None, typer.Option("--adapter", help="LoRA ranker (default: the one served).")] = None,
) -> None:
    """Does the ranker read its candidates? NDCG@10 of its first-id probabilities, with the position bias removed."""
    from api.console import staged_progress
    from eval.ranker_probe import first_slot_logprobs, probe_scores

    base_dir, adapter_dir, cat, _, cases = _test_cases(base, adapter, buyers)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    models = {"base_zero_shot": AutoModelForCausalLM.from_pretrained(base_dir).eval()}
    models["lora"] = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with staged_progress() as progress:
        for name, model in models.items():
            for protocol, protocol_cases in cases.items():
                stage = f"{name} on {protocol}"

                def report(done: int, total: int, stage: str = stage) -> None:
                    progress(stage, done, total)

                rows = first_slot_logprobs(model, tokenizer, protocol_cases, cat, progress=report)
                results.setdefault(name, {})[protocol] = probe_scores(protocol_cases, rows)
    table = Table(title="first-id probe on SYNTHETIC test buyers: NDCG@10")
    for column in ("model", "protocol", "retrieval", "verbalizer", "position-debiased", "position prior (A, B, C)"):
        table.add_column(column)
    for name, by_protocol in results.items():
        for protocol, r in by_protocol.items():
            prior = ", ".join(f"{p:.2f}" for p in r["position_prior"][:3])
            table.add_row(name, protocol, f"{r['retrieval']:.4f}", f"{r['verbalizer']:.4f}",
                          f"{r['position_debiased']:.4f}", prior)  # fmt: skip
    out.print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({**results, "synthetic_buyers": True}, indent=2))


def _served_models(base: str | None, adapter: Path | None) -> tuple[Settings, Path, Path]:
    """Settings with the overrides, and the base folder and adapter they serve (converted once if needed)."""
    from api.components import llm_model_dirs
    from api.console import staged_progress

    settings = get_settings()
    overrides: dict[str, object] = {"base": base} if base else {}
    if adapter is not None:
        overrides["ranker_adapter"] = adapter
    if overrides:
        settings = settings.model_copy(update={"llm": settings.llm.model_copy(update=overrides)})
    with staged_progress() as progress:
        base_dir, adapter_dir = llm_model_dirs(settings, progress=progress)
    return settings, base_dir, adapter_dir


def _in_process_llm(settings: Settings, base_dir: Path, adapter_dir: Path | None) -> Any:
    """The embedded worker's engine in this process, behind the pipeline's LLM seam (the ranker's name too, given)."""
    from llms.in_process import InProcessClient
    from llms.worker.hf_engine import TransformersEngine
    from llms.worker.service import WorkerService

    adapters = {settings.llm.ranker_model: adapter_dir} if adapter_dir is not None else {}
    engine = TransformersEngine.load(base_dir, adapters, dtype=settings.llm.dtype)
    return InProcessClient(WorkerService(engine, served_name=settings.llm.explainer_model))


@eval_app.command("explainer")
def eval_explainer(
    report_dir: Annotated[Path, typer.Option("--report-dir", help="Write explainer_eval.md/json here.")] = Path(
        "eval/reports"
    ),
    turns: Annotated[int, typer.Option("--turns", min=1, help="Chat turns of SYNTHETIC test buyers.")] = 120,
    base: Annotated[str | None, typer.Option("--base", help="Base model (default TANDEM_LLM__BASE).")] = None,
    adapter: Annotated[Path | None, typer.Option("--adapter", help="LoRA ranker (default: the one served).")] = None,
) -> None:
    """Whole chat turns: false attribute claims before and after the check, and how much is the model's own words."""
    from api.components import build_retriever, build_store
    from api.console import staged_progress
    from eval.explainer_eval import evaluate_explainer, write_explainer_report
    from eval.turns import offline_pipeline
    from finetune.buyers import BuyerConfig
    from finetune.ranker_cases import ensure_buyers
    from rag.turn import TurnModels
    from retrieval.catalogue import load_catalogue

    settings, base_dir, adapter_dir = _served_models(base, adapter)
    cat = load_catalogue(settings.catalogue.path, settings.catalogue.columns, check_images=False)
    buyers = ensure_buyers(cat, settings.buyers_dir, BuyerConfig())["test"][:turns]
    llm = _in_process_llm(settings, base_dir, adapter_dir)
    models = TurnModels(ranker=settings.llm.ranker_model, explainer=settings.llm.explainer_model)
    store = build_store(settings)
    try:
        pipeline = offline_pipeline(build_retriever(settings, store), cat, llm, settings.chat, models=models)
        with staged_progress() as progress:
            results = evaluate_explainer(pipeline, buyers, cat,
                                         progress=lambda done, total: progress("chat turns", done, total))  # fmt: skip
    finally:
        store.close()
    e = results["explanations"]
    out.print(f"{results['turns']} turns: false claims before the check {e['false_claim_before_check']:.1%}, shown "
              f"{e['false_claim_shown']:.1%}; the model's own words {e['model_words']:.1%} of explanations "
              f"({results['sentences']['model_words']:.1%} of sentences)")  # fmt: skip
    model = {"base": settings.llm.base, "ranker": shown_path(adapter_dir)}
    out.print(f"report: {write_explainer_report(results, report_dir, model)}")


@eval_app.command("cold-start")
def eval_cold_start(
    report_dir: Annotated[Path, typer.Option("--report-dir", help="Write cold_start.md/json here.")] = Path(
        "eval/reports"
    ),
    buyers: Annotated[int, typer.Option("--buyers", min=1, help="SYNTHETIC test buyers (asked without history).")] = (
        200
    ),
    base: Annotated[str | None, typer.Option("--base", help="Base model (default TANDEM_LLM__BASE).")] = None,
) -> None:
    """Interest topics for buyers without history: valid JSON lists, and topics that retrieve plausible products."""
    from api.components import build_retriever, build_store
    from api.console import staged_progress
    from eval.cold_start_eval import evaluate_cold_start, write_cold_start_report
    from finetune.buyers import BuyerConfig
    from finetune.ranker_cases import ensure_buyers
    from llms.base_model import ensure_base_model
    from retrieval.catalogue import load_catalogue

    settings = get_settings()
    if base:
        settings = settings.model_copy(update={"llm": settings.llm.model_copy(update={"base": base})})
    with staged_progress() as progress:  # the base model only: the cold start needs no ranker
        base_dir = ensure_base_model(settings.llm.base, settings.models_dir, progress=progress)
    cat = load_catalogue(settings.catalogue.path, settings.catalogue.columns, check_images=False)
    chosen = ensure_buyers(cat, settings.buyers_dir, BuyerConfig())["test"][:buyers]
    llm = _in_process_llm(settings, base_dir, None)
    store = build_store(settings)
    try:
        retriever = build_retriever(settings, store)
        with staged_progress() as progress:
            results = evaluate_cold_start(llm, settings.llm.explainer_model, retriever, chosen, cat,
                                          progress=lambda done, total: progress("buyers", done, total))  # fmt: skip
    finally:
        store.close()
    out.print(f"{results['buyers']} buyers: {results['valid_rate']:.1%} valid topic lists, "
              f"{results['plausible_topic_rate']:.1%} of {results['topics']} topics plausible")  # fmt: skip
    out.print(f"report: {write_cold_start_report(results, report_dir, settings.llm.base)}")


@eval_app.command("generality")
def eval_generality(
    work: Annotated[Path, typer.Option("--work", help="Scratch folder: catalogues, towers, indexes.")] = Path(
        "var/generality"
    ),
    report_dir: Annotated[Path, typer.Option("--report-dir", help="Where catalogue_generality.md/json go.")] = Path(
        "eval/reports"
    ),
    new_products: Annotated[int, typer.Option("--new-products", min=20, help="Size of the new catalogue.")] = 1000,
    queries: Annotated[int, typer.Option("--queries", min=4, help="Query products per measurement.")] = 200,
    tiny: Annotated[bool, typer.Option("--tiny", help="Test-sized run (a tiny tower, a few steps).")] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Start over: delete --work (else towers trained alike are reused).")
    ] = False,
) -> None:
    """A SIMULATED catalogue the tower never saw: split the demo data by top-level category, rename its columns,
    and measure photo and text retrieval, the exact-match stage, and small-catalogue towers (scratch, warm start)."""
    import shutil

    from api.components import build_text_encoder, trained_tower_dir
    from eval.generality import GeneralityConfig, run_generality, tiny_config, write_generality_report
    from eval.machine import machine_info

    settings = get_settings()
    demo_tower = trained_tower_dir(settings)
    if demo_tower is None:
        raise CliError("no trained image tower to compare with (artifacts/image-tower is missing)")
    config = tiny_config() if tiny else GeneralityConfig(new_products=new_products, queries=queries)
    if fresh and work.exists():
        shutil.rmtree(work)
    try:
        report = run_generality(settings.catalogue.path, work, build_text_encoder(settings), demo_tower, config,
                                log=lambda msg: out.print(msg, markup=False, highlight=False))  # fmt: skip
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    md = write_generality_report(report, report_dir, machine_info())
    out.print(f"report: {md}")
