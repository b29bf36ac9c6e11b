"""The level-1 sweep against oracles: its metrics against eval.metrics, its search against the retriever's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eval.level1_sweep import (
    SweepData,
    SweepRun,
    category_indexes,
    choose,
    exact_level2,
    flat_run,
    metrics,
    run_config,
    split_halves,
    without_own,
    write_report,
)
from eval.metrics import ndcg_at_k, precision_at_k, reciprocal_rank
from eval.retrieval_eval import _relevance_map, grade
from retrieval.catalogue import Product
from retrieval.edge_store import EdgeStore
from retrieval.hierarchical import HierarchicalRetriever, Level1Config
from retrieval.search import Retriever
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR, IndexManifest, VectorRecord

DIM = 16
PATHS = [("Top", f"Mid{i % 3}", f"Leaf{i}") for i in range(6)]
COLOURS = ["Red", "Blue", ""]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class _NoText:
    model_id = "fixed-text"
    dim = DIM

    def encode(self, texts: list[str]) -> np.ndarray:
        return unit(np.ones((len(texts), DIM)))


class _NoImages:
    model_id = "no-images"
    dim = DIM

    def encode(self, images: list[object]) -> np.ndarray:
        raise AssertionError("not used: the tests pass vectors")


@pytest.fixture(scope="module")
def data() -> SweepData:
    """SYNTHETIC: 6 clustered categories of 25 products, 3 colours; queries are noisy copies of 30 products."""
    rng = np.random.default_rng(7)
    centres = unit(rng.standard_normal((6, DIM)))
    labels = np.repeat(np.arange(6), 25)
    x = unit(centres[labels] + 0.45 * rng.standard_normal((len(labels), DIM)))
    ids = np.array([f"p{i}" for i in range(len(labels))])
    rows = rng.choice(len(labels), size=30, replace=False)
    queries = unit(x[rows] + 0.15 * rng.standard_normal((30, DIM)))
    train = ~np.isin(np.arange(len(labels)), rows)  # the query products never teach level 1
    colours = np.array([COLOURS[i % 3] for i in range(len(labels))])
    return SweepData(ids, [PATHS[c] for c in labels], colours, x, x.copy(), train, queries, rows, k=5)


def _product(data: SweepData, row: int) -> Product:
    colour = str(data.colours[row])
    attrs = {"base_colour": colour} if colour else {}
    return Product(product_id=str(data.ids[row]), title="", category=data.paths[row], attributes=attrs, image_path=None)


def test_metrics_equal_the_evaluation_metrics(data: SweepData) -> None:
    """NDCG (grades and the ideal over the whole index), P@k and MRR against eval.metrics on the same rankings."""
    from retrieval.search import SearchHit

    rng = np.random.default_rng(1)
    top = np.stack([rng.choice(len(data.ids), size=data.k, replace=False) for _ in data.query_rows])
    for i, r in enumerate(data.query_rows[:5]):
        top[i, 0] = r  # some rankings find their own product
    n = len(top)
    run = SweepRun("random", None, Level1Config(), top, np.ones(n), np.ones(n), np.zeros(n))
    got = metrics(data, run)
    nd, prec, rr = [], [], []
    for i, r in enumerate(data.query_rows):
        q = _product(data, r)
        hits = [SearchHit(str(data.ids[j]), "", list(data.paths[j]), 0.0, None, _product(data, j).attributes)
                for j in top[i]]  # fmt: skip
        same = [j for j in range(len(data.ids)) if data.paths[j] == data.paths[r] and j != r]
        n2 = sum(1 for j in same if data.colours[j] == data.colours[r] and data.colours[r])
        rel = _relevance_map(q, hits, (n2, len(same) - n2), "base_colour")
        ranked = [h.product_id for h in hits]
        assert [rel[p] for p in ranked] == [grade(q, h, "base_colour") for h in hits]
        nd.append(ndcg_at_k(ranked, rel, data.k))
        prec.append(precision_at_k(ranked, rel, data.k, threshold=2))
        rr.append(reciprocal_rank(ranked, rel, threshold=2))
    assert got["ndcg@5"] == pytest.approx(np.mean(nd))
    assert got["precision@5"] == pytest.approx(np.mean(prec))
    assert got["mrr"] == pytest.approx(np.mean(rr))


@pytest.fixture(scope="module")
def service(data: SweepData, tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    """The same products in a real Qdrant Edge index (small enough that Qdrant searches exactly)."""
    store = EdgeStore(tmp_path_factory.mktemp("sweep") / "p")
    store.create(IndexManifest(text_encoder="fixed-text", text_dim=DIM, image_encoder="no-images", image_dim=DIM,
                               category_levels=["a", "b", "c"], image_text_aligned=True))  # fmt: skip
    records = []
    for i, pid in enumerate(data.ids):
        parts = list(data.paths[i])
        payload = {"product_id": str(pid), "title": str(pid), "category": parts, "category_path": " > ".join(parts),
                   "cat_0": parts[0], "cat_1": " > ".join(parts[:2]), "cat_2": " > ".join(parts),
                   "attributes": _product(data, i).attributes}  # fmt: skip
        records.append(VectorRecord(str(pid), {IMAGE_VECTOR: data.image[i], TEXT_VECTOR: data.text[i]}, payload))
    store.upsert(records)
    store.finalize()
    return Retriever(store, _NoText(), _NoImages())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "config",
    [
        Level1Config(neighbours=0, prior_weight=0.0, policy="top_m", top_m=2, anchor_hits=0),
        Level1Config(neighbours=10, neighbour_weight=1.0, prior_weight=0.05, candidates=3, mass=0.9, max_fraction=1.0),
        Level1Config(representation="prototype", neighbours=8, neighbour_weight=0.6, prior_weight=0.1, candidates=2),
    ],
)
def test_sweep_search_equals_the_retriever(data: SweepData, service: Retriever, config: Level1Config) -> None:
    """What the sweep scores for a configuration is what the service returns for it: kept categories and hits."""
    cats = category_indexes(data, _NoText(), None)(None, config)  # type: ignore[arg-type]
    run = run_config(data, cats, config)
    hier = HierarchicalRetriever(service, cats, config)
    for qi, q in enumerate(data.queries):
        res = hier.search_vectors({IMAGE_VECTOR: q}, k=data.k)
        assert [h.product_id for h in res.hits] == [str(data.ids[r]) for r in run.top[qi]]
        assert res.searched_fraction == pytest.approx(run.searched[qi])


def test_category_indexes_learn_from_train_products_only(data: SweepData) -> None:
    cats = category_indexes(data, _NoText(), None)(None, Level1Config())  # type: ignore[arg-type]
    labels = np.array([cats.position[" > ".join(p)] for p in data.paths])
    for c in range(len(cats.keys)):
        rows = (labels == c) & data.train
        np.testing.assert_allclose(cats.proto_image[c], unit(data.image[rows].mean(axis=0)), atol=1e-5)
    assert cats.sizes.tolist() == np.bincount(labels).tolist()  # sizes count the query products too


def test_exact_level2_reads_past_the_pool_when_the_kept_categories_run_out() -> None:
    rng = np.random.default_rng(3)
    sims = rng.standard_normal(200)
    inside = rng.random(200) < 0.1
    log_prior = np.log(rng.uniform(0.1, 1.0, 200))
    pool = np.argsort(-sims)[:20]  # too short to hold 4 * 3 kept products
    got = exact_level2(sims, pool, inside, log_prior, 4, 3, 0.2)
    rows = np.flatnonzero(inside)
    cands = rows[np.argsort(-sims[rows])][:12]
    oracle = cands[np.argsort(-(sims[cands] + 0.2 * log_prior[cands]))][:4]
    assert got.tolist() == oracle.tolist()
    assert exact_level2(sims, pool, inside, log_prior, 4, 3, 0.0).tolist() == cands[:4].tolist()


def test_split_halves_is_stable_and_about_half() -> None:
    ids = [f"q{i}" for i in range(400)]
    tune = split_halves(ids)
    assert tune.tolist() == split_halves(list(ids)).tolist()
    assert 150 < tune.sum() < 250
    assert split_halves(ids[:10]).tolist() == tune[:10].tolist()  # a query's half does not depend on the others


def test_choose_keeps_the_recall_floor_and_reports_the_other_half(data: SweepData, tmp_path: Path) -> None:
    n = len(data.query_rows)
    base = flat_run(data)
    good = SweepRun("good", None, Level1Config(), base.top, np.ones(n), np.full(n, 0.2), np.ones(n))
    worse_top = base.top[:, ::-1].copy()  # a worse ranking of the same products
    leaky = SweepRun("leaky", None, Level1Config(), base.top, np.zeros(n), np.full(n, 0.1), np.ones(n))
    poor = SweepRun("poor", None, Level1Config(), worse_top, np.ones(n), np.full(n, 0.1), np.ones(n))
    tune = np.arange(n) % 2 == 0
    best, table = choose(data, [base, leaky, poor, good], tune, min_recall=0.95)
    assert best is good  # "leaky" ties on NDCG but misses the recall floor
    assert {row["run"].name for row in table} == {"flat", "leaky", "poor", "good"}
    _, md = write_report(data, table, best, tmp_path, context={"queries": n, "tune": 15, "test": 15})
    text = md.read_text()
    assert "good **(chosen)**" in text and "flat (exact)" in text


def test_without_own_never_returns_the_query_product(data: SweepData) -> None:
    alone = without_own(data)
    run = flat_run(alone)
    assert not (run.top == data.query_rows[:, None]).any()
    cats = category_indexes(data, _NoText(), None)(None, Level1Config())  # type: ignore[arg-type]
    hier = run_config(alone, cats, Level1Config(neighbours=10))
    assert not (hier.top == data.query_rows[:, None]).any()
    # Its ideal has no grade 3: the best same-path products, in grade order, score exactly 1.
    perfect = np.zeros_like(run.top)
    for i, r in enumerate(data.query_rows):
        same = [j for j in range(len(data.ids)) if data.paths[j] == data.paths[r] and j != r]
        by_grade = sorted(same, key=lambda j: -int(data.colours[j] == data.colours[r] and bool(data.colours[r])))
        perfect[i] = by_grade[: data.k]
    n = len(perfect)
    ideal = SweepRun("ideal", None, Level1Config(), perfect, np.ones(n), np.ones(n), np.zeros(n))
    assert metrics(alone, ideal)["ndcg@5"] == pytest.approx(1.0)
    assert metrics(data, ideal)["ndcg@5"] < 1.0  # with the product indexed, the ideal starts with it
