"""The diversity experiment's arithmetic on hand-made pools: spreads across seeds, the MMR gap, the report."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eval.diversity_experiment import (
    SAMPLING,
    ListScore,
    Request,
    Setting,
    gap_at_equal_ild,
    gap_at_most_diverse,
    run_experiment,
    summarise,
    write_report,
)
from finetune.buyers import Buyer, BuyerProfile
from rag.diversity import ild
from retrieval.catalogue import Catalogue, Product


def test_summarise_spreads_are_across_seed_means() -> None:
    rows = [[ListScore(0.5, 0.2, 0.1, 3.0), ListScore(0.7, 0.4, 0.3, 5.0)], [ListScore(0.3, 0.6), ListScore(0.5, 0.8)]]
    s = summarise("temperature", 1.0, rows, [(0.2, 0.5), (0.4, 1.0)])
    assert (s.ndcg, s.ild) == (0.5, 0.5)
    assert s.ndcg_std == pytest.approx(0.1) and s.ild_std == pytest.approx(0.2) and s.seeds == 2
    assert s.ild_category == pytest.approx(0.1) and s.novelty == pytest.approx(2.0)
    assert (s.product_coverage, s.category_coverage) == (pytest.approx(0.3), pytest.approx(0.75))


def test_gap_is_interpolated_on_the_mmr_curve_without_extrapolating() -> None:
    mmr = [Setting("mmr_lambda", 1.0, 0.8, 0.2, 0, 0, 1), Setting("mmr_lambda", 0.0, 0.4, 0.6, 0, 0, 1)]
    inside = Setting("temperature", 1.0, 0.65, 0.4, 0, 0, 1)  # MMR at ILD 0.4: NDCG 0.6
    outside = Setting("temperature", 1.5, 0.99, 0.9, 0, 0, 1)
    assert gap_at_equal_ild([inside, outside], mmr) == pytest.approx(0.05)
    assert gap_at_equal_ild([outside], mmr) is None
    cool = Setting("temperature", 0.3, 0.9, 0.2, 0, 0, 1)  # beside MMR's λ = 1 point: the best gap (+0.1)
    assert gap_at_equal_ild([cool, inside], mmr) == pytest.approx(0.1)
    assert gap_at_most_diverse([cool, inside, outside], mmr) == pytest.approx(0.05)  # the ILD-0.4 setting's
    assert gap_at_most_diverse([outside], mmr) is None


def _world(n_pools: int = 4) -> tuple[list[Request], Catalogue, dict[str, np.ndarray]]:
    kinds = ["Shirts", "Jeans", "Watches", "Caps"]
    products = [Product(str(i), f"P{i}", ("Apparel", "X", kinds[i % 4]), {"base_colour": "Red"}, None)
                for i in range(100)]  # fmt: skip
    cat = Catalogue(root=Path("."), products=products)
    rng = np.random.default_rng(0)
    vectors = {p.product_id: rng.normal(size=8) + (5.0 if i % 4 == 0 else 0.0) for i, p in enumerate(products)}
    profile = BuyerProfile("boutique", "South Asia", "25-34", None)
    requests = []
    for r in range(n_pools):
        pool = tuple(str(i) for i in range(r * 20, r * 20 + 20))
        buyer = Buyer(f"b{r}", profile, (), pool[0], "shirts", None, "test")
        requests.append(Request(buyer, "words", pool, tuple(np.linspace(1.0, 0.5, 20))))
    return requests, cat, vectors


def test_run_experiment_sweeps_every_knob_over_the_same_pools(tmp_path: Path) -> None:
    requests, cat, vectors = _world()
    calls: list[tuple[float, int]] = []

    def rank(sampling: dict[str, Any], seed: int) -> list[list[str]]:
        calls.append((sampling["temperature"], seed))
        shuffle = random.Random(seed)
        out = []
        for r in requests:
            pool = list(r.pool)
            n = int(len(pool) * min(1.0, sampling["temperature"] / 1.5))  # hotter: more of the list shuffled
            head = pool[:n]
            shuffle.shuffle(head)
            out.append(head + pool[n:])
        return out

    popularity = {p.product_id: (0.5 if int(p.product_id) % 20 < 5 else 0.01) for p in cat.products}
    report = run_experiment(requests, cat, vectors, rank, seeds=2, popularity=popularity)
    assert len(calls) == sum(1 if s["temperature"] == 0.0 else 2 for _, _, s in SAMPLING)
    knobs = [s["knob"] for s in report["settings"]]
    assert knobs.count("temperature") == 6 and knobs.count("mmr_lambda") == 6
    greedy = report["settings"][0]
    assert greedy["seeds"] == 1 and greedy["ild_std"] == 0.0
    assert greedy["ndcg@10"] == report["retrieval_order"]["ndcg@10"]  # T = 0 kept the pool order here
    mmr = {s["value"]: s for s in report["settings"] if s["knob"] == "mmr_lambda"}
    assert mmr[0.0]["ild@10"] > mmr[1.0]["ild@10"] and mmr[1.0]["ndcg@10"] == greedy["ndcg@10"]
    # every top-10 of a 20-product pool shows half of it; the pools hold all four categories
    assert greedy["product_coverage"] == pytest.approx(0.5) and greedy["category_coverage"] == 1.0
    retrieval = report["retrieval_order"]
    assert retrieval["ild_category@10"] == greedy["ild_category@10"] > 0
    # the popular products lead every pool, so pushing the list down the pool raises novelty
    assert retrieval["novelty@10"] < max(s["novelty@10"] for s in report["settings"] if s["knob"] == "temperature")
    assert report["requests"] == {"total": 4, "words": 4, "photo": 0}
    # for scale: a random order of each pool, against a brute-force reading
    rnd = report["random_order"]
    brute = [ild(np.vstack([vectors[p] for p in random.Random(s).sample(r.pool, 20)[:10]])) for s in range(2)
             for r in requests]  # fmt: skip
    assert rnd["ild@10"] == pytest.approx(float(np.mean(brute)), abs=1e-4)
    lowest = min(s["ild@10"] for s in report["settings"] if s["knob"] in {"temperature", "top_p", "top_k"})
    assert report["random_order_ild_ratio"] == pytest.approx(rnd["ild@10"] / lowest, abs=1e-3)
    write_report(report, tmp_path, {"cpu": "test", "logical_cores": 2, "gpu": "none"})
    assert json.loads((tmp_path / "diversity.json").read_text())["ild_range_ratio"] == report["ild_range_ratio"]
    md = (tmp_path / "diversity.md").read_text()
    assert "SYNTHETIC" in md and "## Reading" in md and "ILD@10 raised across" in md and "novelty@10" in md
    assert "| random order |" in md and "For scale: a uniformly random order" in md
    assert (tmp_path / "diversity.png").stat().st_size > 10_000
