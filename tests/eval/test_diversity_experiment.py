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
    gap_to_shuffle,
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


def test_gap_to_shuffle_is_measured_from_the_line_between_retrieval_and_random_order() -> None:
    retrieval = Setting("retrieval", 0.0, 0.9, 0.3, 0, 0, 1)
    random_order = Setting("random", 0.0, 0.4, 0.7, 0, 0, 1)
    # Showing a random order to a share α of the requests: expected NDCG and ILD are both the α-mixture.
    for alpha in (0.0, 0.25, 0.5, 1.0):
        mixed = Setting("temperature", 1.0, 0.9 + alpha * (0.4 - 0.9), 0.3 + alpha * (0.7 - 0.3), 0, 0, 1)
        assert gap_to_shuffle(mixed, retrieval, random_order) == pytest.approx(0.0, abs=1e-9)
    reads = Setting("temperature", 0.6, 0.7, 0.5, 0, 0, 1)  # the shuffle at ILD 0.5 reaches NDCG 0.65
    assert gap_to_shuffle(reads, retrieval, random_order) == pytest.approx(0.05)
    assert gap_to_shuffle(Setting("temperature", 1.5, 0.3, 0.8, 0, 0, 1), retrieval, random_order) is None
    assert gap_to_shuffle(Setting("temperature", 0.0, 0.95, 0.2, 0, 0, 1), retrieval, random_order) is None


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
        requests.append(Request(buyer, "words", pool, tuple(np.linspace(1.0, 0.5, 20)), explored=5))
    return requests, cat, vectors


def test_run_experiment_sweeps_every_knob_over_the_same_pools(tmp_path: Path) -> None:
    requests, cat, vectors = _world()
    calls: list[tuple[float, int]] = []
    hottest: list[list[str]] = []

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
        if sampling == {"temperature": 1.5}:
            hottest.extend(out)
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
    # the explored tail (each pool's last 5) is out of the top 10 in pool order; the hottest setting pulls some in
    assert retrieval["explored@10"] == greedy["explored@10"] == 0.0
    tails = [set(r.pool[-5:]) for r in requests] * 2  # two seeds, each ranking every pool
    brute_explored = np.mean([sum(p in t for p in order[:10]) / 10 for order, t in zip(hottest, tails, strict=True)])
    hot = next(s for s in report["settings"] if s["knob"] == "temperature" and s["value"] == 1.5)
    assert hot["explored@10"] == pytest.approx(float(brute_explored), abs=1e-4) and hot["explored@10"] > 0
    # the shuffle gap of every setting is its distance from the retrieval→random line, None outside it
    for s in report["settings"]:
        expected = gap_to_shuffle(Setting(s["knob"], s["value"], s["ndcg@10"], s["ild@10"], 0, 0, 1),
                                  Setting("retrieval", 0, retrieval["ndcg@10"], retrieval["ild@10"], 0, 0, 1),
                                  Setting("random", 0, report["random_order"]["ndcg@10"],
                                          report["random_order"]["ild@10"], 0, 0, 1))  # fmt: skip
        assert s["ndcg_gap_vs_shuffle"] == expected
    sampled_gaps = [s["ndcg_gap_vs_shuffle"] for s in report["settings"]
                    if s["knob"] != "mmr_lambda" and s["ndcg_gap_vs_shuffle"] is not None]  # fmt: skip
    assert report["ndcg_gap_vs_shuffle"]["settings_compared"] == len(sampled_gaps) > 0
    assert report["ndcg_gap_vs_shuffle"]["min"] == min(sampled_gaps)
    # for scale: a random order of each pool, against its expectation: a uniformly random top 10's pairs are
    # uniformly random pairs of the pool, and each of its places holds a tail product with probability 5/20
    rnd = report["random_order"]
    expected_ild = float(np.mean([ild(np.vstack([vectors[p] for p in r.pool])) for r in requests]))
    assert rnd["ild@10"] == pytest.approx(expected_ild, abs=0.03)
    assert rnd["explored@10"] == pytest.approx(0.25, abs=0.05)
    lowest = min(s["ild@10"] for s in report["settings"] if s["knob"] in {"temperature", "top_p", "top_k"})
    assert report["random_order_ild_ratio"] == pytest.approx(rnd["ild@10"] / lowest, abs=1e-3)
    write_report(report, tmp_path, {"cpu": "test", "logical_cores": 2, "gpu": "none"})
    assert json.loads((tmp_path / "diversity.json").read_text())["ild_range_ratio"] == report["ild_range_ratio"]
    md = (tmp_path / "diversity.md").read_text()
    assert "SYNTHETIC" in md and "## Reading" in md and "ILD@10 raised across" in md and "novelty@10" in md
    assert "| random order |" in md and "For scale: a uniformly random order" in md
    assert "vs shuffle" in md and "explored@10" in md and "above a partial shuffle at equal ILD" in md
    assert (tmp_path / "diversity.png").stat().st_size > 10_000
