"""``tandem experiment …``: experiments whose results shape the product (the diversity calibration)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from api.console import CliError, out, staged_progress
from api.settings import Settings, get_settings

if TYPE_CHECKING:
    import numpy as np

    from eval.diversity_experiment import Request
    from finetune.buyers import Buyer
    from retrieval.catalogue import Catalogue

__all__ = ["experiment_app"]

experiment_app = typer.Typer(no_args_is_help=True, help="Experiments: relevance–diversity trade-off.")


@experiment_app.command("diversity")
def diversity(
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
    report_dir: Annotated[Path, typer.Option("--report-dir", help="Where diversity.md/json/png go.")] = Path(
        "eval/reports"
    ),
    budget: Annotated[int, typer.Option("--budget", min=14, help="At most this many ranker requests in all.")] = 1600,
    seeds: Annotated[int, typer.Option("--seeds", min=1, max=10, help="Seeds per sampling setting.")] = 3,
    pool: Annotated[int, typer.Option("--pool", min=10, max=26, help="Precise hits per pool (hierarchical).")] = 10,
    explore: Annotated[
        int, typer.Option("--explore", min=0, max=20, help="Nearby categories adding their best product.")
    ] = 16,
) -> None:
    """Sweep temperature, top-p, top-k and MMR λ over the same pools: NDCG@10 against ILD@10, plots, calibration."""
    from api.components import llm_model_dirs
    from eval.diversity import purchase_popularity
    from eval.diversity_experiment import SAMPLING, K, ranker_orders, run_experiment, write_report
    from eval.machine import machine_info
    from finetune.buyers import BuyerConfig
    from finetune.ranker_cases import ensure_buyers
    from llms.in_process import InProcessClient
    from llms.worker.hf_engine import TransformersEngine
    from llms.worker.service import WorkerService
    from rag.diversity import CalibrationPoint, CalibrationPool, DiversityCalibration
    from rag.ranker_format import HANDLES
    from retrieval.catalogue import load_catalogue
    from retrieval.hierarchical import EXPLORE_PER_CATEGORY

    size = pool + EXPLORE_PER_CATEGORY * explore
    if size > len(HANDLES):
        raise CliError(f"--pool {pool} plus --explore {explore} is over the ranker's {len(HANDLES)} candidate ids")
    if size <= K:
        raise CliError(f"--pool {pool} plus --explore {explore} is no larger than the {K} products a list shows")
    settings = get_settings()
    with staged_progress() as progress:
        base_dir, adapter_dir = llm_model_dirs(settings, progress=progress)
    calls_per_request = sum(1 if s["temperature"] == 0.0 else seeds for _, _, s in SAMPLING)
    wanted = budget // calls_per_request
    if wanted < 1:
        raise CliError(f"--budget {budget} is below one request's {calls_per_request} ranker calls")
    cat = load_catalogue(settings.catalogue.path, settings.catalogue.columns, check_images=False)
    by_split = ensure_buyers(cat, settings.buyers_dir, BuyerConfig())
    buyers = by_split["test"]
    # Novelty against what the SYNTHETIC train buyers bought: the popularity a live system would log.
    popularity = purchase_popularity((pid for b in by_split["train"] for pid in (*b.history, b.target)),
                                     (p.product_id for p in cat.products))  # fmt: skip
    requests, vectors = _candidate_pools(settings, cat, buyers, pool=pool, explore=explore, wanted=wanted)
    out.print(f"{len(requests)} requests ({sum(r.kind == 'photo' for r in requests)} photo-only) of SYNTHETIC test"
              f" buyers, {calls_per_request} ranker calls each")  # fmt: skip
    engine = TransformersEngine.load(base_dir, {"tandem-ranker": adapter_dir}, dtype=settings.llm.dtype)
    llm = InProcessClient(WorkerService(engine))
    with staged_progress() as progress:
        report = run_experiment(
            requests,
            cat,
            vectors,
            lambda sampling, seed: ranker_orders(llm, "tandem-ranker", cat, requests, sampling, seed),
            seeds=seeds,
            popularity=popularity,
            progress=progress,
            pool=(pool, explore),
        )
    write_report(report, report_dir, machine_info())
    points = [CalibrationPoint(s["knob"], s["value"], s["ndcg@10"], s["ild@10"]) for s in report["settings"]]
    measured_on = CalibrationPool(candidates=size, explore=explore)
    DiversityCalibration(points, str(report_dir / "diversity.json"), measured_on).save(
        settings.diversity_calibration_path
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
    gap = report["ndcg_gap_vs_mmr_at_equal_ild"]
    calibration = settings.diversity_calibration_path
    out.print(f"ILD@10 range of the sampling knobs: {report['ild_range_ratio']:.2f}x; NDCG@10 gap vs MMR at equal"
              f" ILD: {gap}; report: {report_dir / 'diversity.md'}; calibration: {calibration}")  # fmt: skip


def _candidate_pools(
    settings: Settings, cat: Catalogue, buyers: Sequence[Buyer], *, pool: int, explore: int, wanted: int
) -> tuple[list[Request], dict[str, np.ndarray]]:
    """Up to ``wanted`` requests whose pools fill the ranker's list (words, and the photo alone where one was sent)."""
    from api.components import build_retriever, build_store
    from eval.diversity_experiment import Request
    from retrieval.hierarchical import EXPLORE_PER_CATEGORY
    from retrieval.images import ImageLimits, read_image_file
    from retrieval.search import SearchQuery
    from retrieval.store import IMAGE_VECTOR

    size = pool + EXPLORE_PER_CATEGORY * explore
    limits = ImageLimits()
    store = build_store(settings)
    requests: list[Request] = []
    try:
        retriever = build_retriever(settings, store)
        with staged_progress() as progress:
            for buyer in buyers:
                photo = cat.get(buyer.query_image) if buyer.query_image else None
                image = read_image_file(photo.image_path, limits) if photo and photo.image_path else None
                queries = [("words", SearchQuery(text=buyer.query_text, image=image))]
                if image is not None:
                    queries.append(("photo", SearchQuery(image=image)))
                for kind, query in queries:
                    result = retriever.search(query, k=pool, explore=explore)
                    hits = result.hits
                    if len(hits) >= size and len(requests) < wanted:
                        requests.append(Request(buyer, kind, tuple(h.product_id for h in hits),
                                                tuple(h.score for h in hits), explored=result.explored))  # fmt: skip
                progress("candidate pools", len(requests), wanted)
                if len(requests) >= wanted:
                    break
            ids = sorted({p for r in requests for p in r.pool})
            vectors = store.vectors(ids, using=IMAGE_VECTOR)
    finally:
        store.close()
    return requests, vectors
