from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from eval.bench_hierarchical import bench_scaling, scaled_sizes
from eval.metrics import ndcg_at_k, recall_at_k
from eval.queries import buyer_photo, make_photo_queries
from eval.retrieval_eval import _relevance_map, grade, load_queries
from retrieval.catalogue import Product, load_catalogue
from retrieval.search import SearchHit

Q = Product("q", "Red Kurta", ("Apparel", "Topwear", "Kurtas"), {"base_colour": "Red"}, None)


def hit(pid: str, cat: tuple[str, ...] = Q.category, colour: str = "Red") -> SearchHit:
    return SearchHit(pid, pid, list(cat), 0.5, None, {"base_colour": colour})


def test_grades() -> None:
    assert grade(Q, hit("q"), "base_colour") == 3
    assert grade(Q, hit("a"), "base_colour") == 2
    assert grade(Q, hit("b", colour="Blue"), "base_colour") == 1
    assert grade(Q, hit("c", cat=("Apparel", "Topwear", "Shirts")), "base_colour") == 0


def test_relevance_map_accounts_for_unretrieved_items() -> None:
    hits = [hit("a"), hit("b", colour="Blue"), hit("x", cat=("Footwear", "Shoes", "Heels"))]
    # The index holds 3 other red kurtas (grade 2) and 4 non-red kurtas (grade 1); the query itself is grade 3.
    rel = _relevance_map(Q, hits, (3, 4), "base_colour")
    assert sorted(rel.values(), reverse=True) == [3, 2, 2, 2, 1, 1, 1, 1, 0]
    ranked = [h.product_id for h in hits]
    assert recall_at_k(ranked, rel, 10, threshold=2) == pytest.approx(1 / 4)  # "a" of {q, a, 2 unretrieved}
    # DCG = (2^2-1)/log2(2) + (2^1-1)/log2(3); ideal = 7 + 3/log2 3 + 3/2 + 3/log2 5 + 4 ones at ranks 5..8.
    assert 0 < ndcg_at_k(ranked, rel, 10) < 1
    # A query product missing from the index cannot be retrieved, so the ideal ranking leaves it out.
    absent = _relevance_map(Q, hits, (3, 4), "base_colour", query_indexed=False)
    assert "q" not in absent and sorted(absent.values(), reverse=True) == [2, 2, 2, 1, 1, 1, 1, 0]


def test_scaled_sizes_keep_the_long_tail() -> None:
    real = {"big": 7000, "mid": 300, "tiny": 1}
    sizes = scaled_sizes(real, 1000)
    assert sum(sizes.values()) == 1000
    assert sizes["tiny"] >= 1 and sizes["big"] > sizes["mid"] > 0
    with pytest.raises(ValueError, match="at least one product per category"):
        scaled_sizes(real, 2)


def test_bench_scaling_small(tmp_path: Path) -> None:
    """SYNTHETIC: one small size through the real Qdrant Edge path."""
    rows = bench_scaling({"a": 50, "b": 30, "c": 15, "d": 5}, sizes=(400,), dim=16, queries=10, work_dir=tmp_path)
    (row,) = rows
    assert row["synthetic"] is True and row["n"] == 400
    assert 0 < row["searched_fraction"] <= 1
    assert 0 <= row["category_recall"] <= 1 and 0 <= row["top10_overlap_with_flat"] <= 1
    assert row["flat_p50_ms"] > 0 and row["hier_p50_ms"] > 0
    assert row["exact_flat_p50_ms"] > 0 and row["exact_hier_p50_ms"] > 0 and row["exact_speedup_p50"] > 0


def test_buyer_photo_differs_from_the_thumbnail() -> None:
    src = Image.new("RGB", (60, 80), (200, 30, 30))
    photo = buyer_photo(src, random.Random(0))
    assert photo.mode == "RGB"
    assert max(photo.size) >= 100 and photo.size != src.size


def test_make_photo_queries_round_trips(small_catalogue_dir: Path, tmp_path: Path) -> None:
    products = load_catalogue(small_catalogue_dir, limit=8).products
    csv_path = make_photo_queries(products, tmp_path / "q")
    q = load_queries(csv_path, tmp_path / "q" / "images")
    assert [p.product_id for p in q.products] == [p.product_id for p in products]
    assert q.products[0].category == products[0].category
    assert q.products[0].attributes == products[0].attributes
    assert q.issues == []
