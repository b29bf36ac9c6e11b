"""Hierarchical retrieval: level-1 policies on hand-made categories, level 2 against a NumPy oracle."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from retrieval.categories import CategoryIndex
from retrieval.edge_store import EdgeStore
from retrieval.errors import RetrievalError
from retrieval.hierarchical import HierarchicalRetriever, Level1Config, score_categories, select_categories
from retrieval.search import Retriever
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR, IndexManifest, VectorRecord

DIM = 16


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class FixedTextEncoder:
    """Category names map to fixed vectors: a stand-in text encoder with known outputs."""

    model_id = "fixed-text"
    dim = DIM

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, DIM), np.float32)


class NoImages:
    model_id = "no-images"
    dim = DIM

    def encode(self, images: list[object]) -> np.ndarray:
        raise AssertionError("not used: these tests pass vectors directly")


def cats(sizes: list[int]) -> CategoryIndex:
    n = len(sizes)
    eye = np.eye(n, DIM, dtype=np.float32)
    return CategoryIndex(None, [f"c{i}" for i in range(n)], np.array(sizes), eye, eye, eye)


def keep(categories: CategoryIndex, vectors: dict[str, np.ndarray], **config: object) -> list[str]:
    cfg = Level1Config(**config)  # type: ignore[arg-type]
    return select_categories(score_categories(vectors, categories, cfg, image_aligned=True), categories, cfg).kept


def test_policies_on_hand_made_scores() -> None:
    c = cats([10, 20, 30, 40])  # 100 products
    scores = np.array([0.9, 0.8, 0.5, 0.1])
    pick = lambda **kw: select_categories(scores, c, Level1Config(**kw))  # noqa: E731
    assert pick(policy="top_m", top_m=2).kept == ["c0", "c1"]
    # fraction: keep until >= 25 % of the catalogue is covered: c0 (10) + c1 (20) = 30.
    assert pick(policy="fraction", target_fraction=0.25).kept == ["c0", "c1"]
    assert pick(policy="margin", margin=0.15, max_fraction=1.0).kept == ["c0", "c1"]
    assert pick(policy="margin", margin=0.15, max_fraction=0.2).kept == ["c0"]  # c1 would pass the cap
    # mass: softmax(s / 0.1) = [.73, .27, .01, .0002]: two categories reach 0.95.
    r = pick(policy="mass", mass=0.95, temperature=0.1, max_fraction=1.0)
    assert r.kept == ["c0", "c1"]
    assert r.probabilities[0] == pytest.approx(np.exp(9) / np.exp(np.array([9, 8, 5, 1])).sum())
    assert r.searched == 30 and r.searched_fraction == pytest.approx(0.3)


def test_min_products_overrides_the_policy() -> None:
    c = cats([3, 4, 50, 40])
    r = select_categories(np.array([0.9, 0.8, 0.5, 0.1]), c, Level1Config(policy="top_m", top_m=1), min_products=10)
    assert r.kept == ["c0", "c1", "c2"] and r.searched == 57


def test_best_category_is_kept_even_above_the_cap() -> None:
    c = cats([90, 5, 5])
    r = select_categories(np.array([0.9, 0.2, 0.1]), c, Level1Config(policy="mass", max_fraction=0.05))
    assert r.kept == ["c0"]


def test_long_tail_category_is_reachable() -> None:
    # One big category and a singleton: scores have no size prior, so the singleton wins on its own vector.
    c = cats([10_000, 1])
    assert keep(c, {IMAGE_VECTOR: c.proto_image[1]}, representation="prototype", policy="top_m", top_m=1) == ["c1"]
    assert keep(c, {TEXT_VECTOR: c.text[1]}, representation="text", policy="top_m", top_m=1) == ["c1"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[HierarchicalRetriever, dict[str, object]]:
    """SYNTHETIC: 6 categories of clustered random vectors (one a singleton) in a real Qdrant Edge index."""
    rng = np.random.default_rng(3)
    centres = unit(rng.standard_normal((6, DIM)))
    sizes = [60, 40, 30, 20, 10, 1]
    keys = [f"Top > Mid{i} > Leaf{i}" for i in range(6)]
    ids, vecs, labels = [], [], []
    for c, n in enumerate(sizes):
        for j in range(n):
            ids.append(f"s{c}-{j}")
            vecs.append(unit(centres[c] + 0.35 * rng.standard_normal(DIM)))
            labels.append(c)
    x = np.stack(vecs)
    store = EdgeStore(tmp_path_factory.mktemp("h") / "p")
    store.create(
        IndexManifest(
            text_encoder="fixed-text",
            text_dim=DIM,
            image_encoder="no-images",
            image_dim=DIM,
            category_levels=["a", "b", "c"],
            image_text_aligned=True,
        )
    )
    records = []
    for pid, v, c in zip(ids, x, labels, strict=True):
        parts = keys[c].split(" > ")
        payload = {
            "product_id": pid,
            "title": pid,
            "category": parts,
            "category_path": keys[c],
            "cat_0": parts[0],
            "cat_1": " > ".join(parts[:2]),
            "cat_2": keys[c],
            "attributes": {},
        }
        records.append(VectorRecord(pid, {IMAGE_VECTOR: v, TEXT_VECTOR: v}, payload))
    store.upsert(records)
    store.finalize()
    text = FixedTextEncoder({k: centres[i] for i, k in enumerate(keys)})
    categories = CategoryIndex.build(store, text)
    h = HierarchicalRetriever(
        Retriever(store, text, NoImages()),
        categories,
        Level1Config(policy="top_m", top_m=2, prior_weight=0.0, anchor_hits=0, neighbours=0),
    )
    return h, {"ids": np.array(ids), "x": x, "labels": np.array(labels), "keys": keys, "centres": centres}


def brute_force_inside(d: dict[str, object], q: np.ndarray, categories: list[str], k: int) -> list[str]:
    """The oracle: the ``k`` products most similar to ``q`` among those of ``categories``, by NumPy."""
    x, ids, labels, keys = d["x"], d["ids"], d["labels"], d["keys"]
    inside = np.isin(np.array(keys)[labels], categories)  # type: ignore[index]
    scores = np.where(inside, x @ q, -np.inf)  # type: ignore[operator]
    return [ids[i] for i in np.argsort(-scores)[:k] if np.isfinite(scores[i])]  # type: ignore[index]


def test_category_index_from_store(synthetic: tuple[HierarchicalRetriever, dict[str, object]]) -> None:
    h, d = synthetic
    c = h.categories
    assert c.keys == sorted(d["keys"])  # type: ignore[call-overload]
    assert int(c.sizes.sum()) == len(d["ids"])  # type: ignore[arg-type]
    singleton = c.keys.index("Top > Mid5 > Leaf5")
    assert c.sizes[singleton] == 1
    np.testing.assert_allclose(c.proto_image[singleton], d["x"][-1], atol=1e-5)  # type: ignore[index]
    assert c.proto_image.shape == (6, DIM)
    np.testing.assert_allclose(np.linalg.norm(c.proto_text, axis=1), 1.0, atol=1e-5)


def test_level2_equals_brute_force_inside_kept_categories(
    synthetic: tuple[HierarchicalRetriever, dict[str, object]],
) -> None:
    h, d = synthetic
    x, ids = d["x"], d["ids"]
    rng = np.random.default_rng(11)
    for q in unit(rng.standard_normal((5, DIM))):
        res = h.search_vectors({IMAGE_VECTOR: q}, k=7)
        assert res.level1 is not None and len(res.level1.kept) == 2
        assert [hit.product_id for hit in res.hits] == brute_force_inside(d, q, res.level1.kept, 7)
        flat = h.search_vectors({IMAGE_VECTOR: q}, k=7, mode="flat")
        assert [hit.product_id for hit in flat.hits] == [ids[i] for i in np.argsort(-(x @ q))[:7]]  # type: ignore[index,operator]
        assert flat.searched_fraction == 1.0
        assert 0 < res.searched_fraction < 1


def test_singleton_category_found_from_its_product(synthetic: tuple[HierarchicalRetriever, dict[str, object]]) -> None:
    h, d = synthetic
    res = h.search_vectors({IMAGE_VECTOR: d["x"][-1]}, k=1)  # type: ignore[index]
    assert res.level1 is not None and res.level1.kept[0] == "Top > Mid5 > Leaf5"
    assert res.hits[0].product_id == "s5-0"


def test_category_index_cache_round_trip(
    synthetic: tuple[HierarchicalRetriever, dict[str, object]], tmp_path: Path
) -> None:
    h, _ = synthetic
    text = h.retriever.text_encoder
    first = CategoryIndex.load_or_build(h.retriever.store, text, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("level1-*.npz"))) == 1
    again = CategoryIndex.load_or_build(h.retriever.store, text, cache_dir=tmp_path)
    assert again.keys == first.keys
    np.testing.assert_array_equal(again.sizes, first.sizes)
    np.testing.assert_allclose(again.proto_image, first.proto_image)


def test_coarser_level_depth(synthetic: tuple[HierarchicalRetriever, dict[str, object]]) -> None:
    h, d = synthetic
    mid = CategoryIndex.build(
        h.retriever.store, FixedTextEncoder({f"Top > Mid{i}": d["centres"][i] for i in range(6)}), depth=1
    )  # type: ignore[index]
    assert mid.keys == [f"Top > Mid{i}" for i in range(6)]
    hm = HierarchicalRetriever(h.retriever, mid, Level1Config(policy="top_m", top_m=1))
    res = hm.search_vectors({IMAGE_VECTOR: d["x"][0]}, k=5)  # type: ignore[index]
    assert res.level1 is not None and res.level1.kept == ["Top > Mid0"]
    assert all(hit.category[:2] == ["Top", "Mid0"] for hit in res.hits)


def test_category_prior_reorders_level2(synthetic: tuple[HierarchicalRetriever, dict[str, object]]) -> None:
    h, d = synthetic
    centres = d["centres"]
    q = (centres[0] + centres[1]) / np.linalg.norm(centres[0] + centres[1])  # type: ignore[index]
    strong = HierarchicalRetriever(
        h.retriever,
        h.categories,
        Level1Config(policy="top_m", top_m=2, prior_weight=5.0, temperature=0.05, anchor_hits=0),
    )
    res = strong.search_vectors({IMAGE_VECTOR: q.astype(np.float32)}, k=10)
    assert res.level1 is not None
    best = res.level1.kept[0]
    in_best = [" > ".join(hit.category) == best for hit in res.hits]
    # A heavy prior puts every hit of the more probable category first, each group by similarity.
    assert in_best == sorted(in_best, reverse=True)
    assert any(in_best)


def test_always_k_results_when_the_catalogue_has_them(
    synthetic: tuple[HierarchicalRetriever, dict[str, object]],
) -> None:
    h, d = synthetic
    # The singleton category is the best match, yet 25 results come back: level 1 keeps enough products.
    res = h.search_vectors({IMAGE_VECTOR: d["x"][-1]}, k=25)  # type: ignore[index]
    assert len(res.hits) == 25
    assert len({hit.product_id for hit in res.hits}) == 25
    assert res.hits[0].product_id == "s5-0"


def test_anchor_categories_are_always_kept(synthetic: tuple[HierarchicalRetriever, dict[str, object]]) -> None:
    c = cats([10, 20, 30])
    r = select_categories(np.array([0.9, 0.5, 0.1]), c, Level1Config(policy="top_m", top_m=1), always=["c2", "zz"])
    assert r.kept == ["c0", "c2"] and r.searched == 40
    h, _ = synthetic
    anchored = HierarchicalRetriever(
        h.retriever, h.categories, Level1Config(policy="top_m", top_m=1, prior_weight=0.0, anchor_hits=1)
    )
    rng = np.random.default_rng(5)
    for raw in rng.standard_normal((10, DIM)).astype(np.float32):
        q = raw / np.linalg.norm(raw)
        nearest = h.search_vectors({IMAGE_VECTOR: q}, k=1, mode="flat").hits[0]
        res = anchored.search_vectors({IMAGE_VECTOR: q}, k=5)
        assert res.level1 is not None and " > ".join(nearest.category) in res.level1.kept
        assert res.hits[0].product_id == nearest.product_id


def test_explore_adds_the_best_products_of_the_next_categories(
    synthetic: tuple[HierarchicalRetriever, dict[str, object]],
) -> None:
    """The exploration tail against brute force: per left-out category in level 1's order, its best products."""
    from retrieval.hierarchical import score_categories

    h, d = synthetic
    rng = np.random.default_rng(5)
    for q in unit(rng.standard_normal((4, DIM))):
        vectors = {IMAGE_VECTOR: q}
        res = h.search_vectors(vectors, k=5)
        assert res.level1 is not None
        tail = h.explore(vectors, res, 2, per_category=2)
        scores = score_categories(vectors, h.categories, h.config, image_aligned=True)
        order = [h.categories.keys[i] for i in np.argsort(-scores, kind="stable")]
        nearby = [key for key in order if key not in res.level1.kept][:2]
        expected = [pid for key in nearby for pid in brute_force_inside(d, q, [key], 2)]
        assert sorted(t.product_id for t in tail) == sorted(expected)
        assert [t.score for t in tail] == sorted((t.score for t in tail), reverse=True)
        assert not {t.product_id for t in tail} & {hit.product_id for hit in res.hits}
    assert h.explore({IMAGE_VECTOR: q}, res, 0) == []
    flat = h.search_vectors({IMAGE_VECTOR: q}, k=5, mode="flat")
    assert h.explore({IMAGE_VECTOR: q}, flat, 2) == []  # a flat search leaves no category out


def test_explored_products_are_scored_with_their_category_prior(
    synthetic: tuple[HierarchicalRetriever, dict[str, object]],
) -> None:
    """Level 2's rescoring applies to the tail too, so pool scores (and MMR over them) stay comparable."""
    from retrieval.hierarchical import calibrated, score_categories

    h0, d = synthetic
    cfg = Level1Config(policy="top_m", top_m=2, prior_weight=0.05, anchor_hits=0, neighbours=0)
    h = HierarchicalRetriever(h0.retriever, h0.categories, cfg)
    x, ids = d["x"], list(d["ids"])  # type: ignore[call-overload]
    q = unit(np.random.default_rng(8).standard_normal((1, DIM)))[0]
    res = h.search_vectors({IMAGE_VECTOR: q}, k=5)
    scores = score_categories({IMAGE_VECTOR: q}, h.categories, cfg, image_aligned=True)
    probs = dict(zip(h.categories.keys, calibrated(scores, cfg.temperature), strict=True))
    for hit in h.explore({IMAGE_VECTOR: q}, res, 3):
        raw = float(x[ids.index(hit.product_id)] @ q)  # type: ignore[index]
        expected = raw + 0.05 * np.log(max(probs[" > ".join(hit.category)], 1e-6))
        assert hit.score == pytest.approx(expected, abs=1e-4)
        assert hit.score < raw  # a left-out category's prior is below one


# --- level-1 methods against oracles (clusters, neighbours' vote, learned head, soft prior) ---------------------


def _two_mode_catalogue(rng: np.random.Generator, n: int = 40) -> tuple[list[str], np.ndarray, np.ndarray]:
    """SYNTHETIC: category A has two modes (e0 and e1); B sits near A's first mode but off to e2, so A's single
    mean ((e0 + e1) / sqrt 2) is less like a photo of A's first mode than B's mean is."""
    e = np.eye(DIM, dtype=np.float32)
    a0 = unit(e[0] + 0.05 * rng.standard_normal((n, DIM)))
    a1 = unit(e[1] + 0.05 * rng.standard_normal((n, DIM)))
    b = unit(0.8 * e[0] + 0.6 * e[2] + 0.05 * rng.standard_normal((n, DIM)))
    keys = ["A"] * (2 * n) + ["B"] * n
    return keys, np.concatenate([a0, a1, b]), unit(e[0] + 0.05 * rng.standard_normal((20, DIM)))


def test_cluster_prototypes_recover_a_multi_modal_category_a_single_mean_misses() -> None:
    from retrieval.categories import cluster_prototypes

    rng = np.random.default_rng(0)
    keys, x, queries = _two_mode_catalogue(rng)  # every query is a photo of A's first mode
    mean = CategoryIndex.from_vectors(None, keys, x, x, None, clusters=1)
    multi = CategoryIndex.from_vectors(None, keys, x, x, None, clusters=2)
    assert multi.cluster_image is not None and multi.cluster_owner is not None
    assert multi.cluster_owner.tolist() == [0, 0, 1, 1]

    def pick(c: CategoryIndex, rep: str, q: np.ndarray) -> str:
        cfg = Level1Config(representation=rep)  # type: ignore[arg-type]
        return c.keys[int(np.argmax(score_categories({IMAGE_VECTOR: q}, c, cfg, image_aligned=False)))]

    assert [pick(mean, "prototype", q) for q in queries] == ["B"] * len(queries)  # the oracle says A: the mean misses
    assert [pick(multi, "clusters", q) for q in queries] == ["A"] * len(queries)
    # One cluster is the normalised mean; two well-separated modes give one prototype near each.
    np.testing.assert_allclose(cluster_prototypes(x[:80], 1)[0], unit(x[:80].mean(axis=0)), atol=1e-5)
    two = cluster_prototypes(x[:80], 2)
    assert sorted(int(np.argmax(p)) for p in two) == [0, 1]


def test_neighbour_vote_by_hand() -> None:
    from retrieval.hierarchical import neighbour_vote
    from retrieval.search import SearchHit

    c = cats([5, 5, 5])
    hits = [
        SearchHit(f"p{i}", "", [key], s, None) for i, (key, s) in enumerate([("c1", 0.9), ("c1", 0.88), ("c2", 0.86)])
    ]
    w = np.array([0.0, 1 + np.exp(-0.02 / 0.02), np.exp(-0.04 / 0.02)])
    np.testing.assert_allclose(neighbour_vote(hits, c, 0.02), w / w.sum())
    np.testing.assert_allclose(neighbour_vote([], c, 0.02), np.full(3, 1 / 3))


def test_neighbours_vote_the_right_category_when_names_mislead(
    synthetic: tuple[HierarchicalRetriever, dict[str, object]],
) -> None:
    """Category names that point at the wrong category: the nearest products' vote still finds the true one."""
    h, d = synthetic
    x, labels, keys = d["x"], d["labels"], d["keys"]
    wrong = dataclasses.replace(h.categories, text=np.roll(h.categories.text, 1, axis=0))
    names_only = Level1Config(representation="text", policy="top_m", top_m=1, anchor_hits=0, neighbours=0)
    voting = names_only.model_copy(update={"neighbours": 5, "neighbour_weight": 0.9})
    rng = np.random.default_rng(2)
    picks = rng.choice(len(labels), size=12, replace=False)  # type: ignore[arg-type]
    misled = 0
    for i in picks:
        q = unit(x[i] + 0.05 * rng.standard_normal(DIM))  # type: ignore[index]
        truth = keys[labels[i]]  # type: ignore[index]
        misled += HierarchicalRetriever(h.retriever, wrong, names_only).search_vectors(
            {IMAGE_VECTOR: q}, k=3
        ).level1.kept != [truth]  # type: ignore[union-attr]
        res = HierarchicalRetriever(h.retriever, wrong, voting).search_vectors({IMAGE_VECTOR: q}, k=3)
        assert res.level1 is not None and res.level1.kept == [truth]
    assert misled == len(picks)  # without the vote every query went to the wrong category


def test_level1_scores_without_a_vote_calibrate_like_the_representation() -> None:
    from retrieval.hierarchical import calibrated, level1_scores

    c = cats([10, 20, 30])
    q = unit(np.random.default_rng(1).standard_normal(DIM))
    cfg = Level1Config(neighbours=0, temperature=0.05)
    raw = score_categories({IMAGE_VECTOR: q}, c, cfg, image_aligned=True)
    mixed = level1_scores({IMAGE_VECTOR: q}, c, cfg.model_copy(update={"neighbours": 5, "neighbour_weight": 0.0}),
                          image_aligned=True)  # fmt: skip
    np.testing.assert_allclose(calibrated(mixed, 0.05), calibrated(raw, 0.05), atol=1e-6)


def test_head_learns_from_train_products_only(synthetic: tuple[HierarchicalRetriever, dict[str, object]]) -> None:
    from retrieval.categories import fit_category_head

    h, d = synthetic
    ids, x, labels = list(d["ids"]), d["x"], d["labels"]  # type: ignore[call-overload]
    held = {pid for pid in ids if int(pid.split("-")[1]) % 4 == 0}  # a quarter of each category, never learned from
    built = CategoryIndex.build(h.retriever.store, h.retriever.text_encoder, exclude=held, head=True)
    assert built.head is not None and int(built.sizes.sum()) == len(ids)  # sizes still count every product
    # The oracle: the same fit on exactly the train rows, read in the store's order (the fit is deterministic).
    rows = [
        (str(p["product_id"]), p["category_path"], v[IMAGE_VECTOR])
        for p, v in h.retriever.store.scroll(vectors=[IMAGE_VECTOR])
    ]
    order = {k: i for i, k in enumerate(built.keys)}
    taught = {key for pid, key, _ in rows if pid not in held}  # a category with no train product learns from its own
    train_rows = [(order[key], vec) for pid, key, vec in rows if pid not in held or key not in taught]
    expected = fit_category_head(np.stack([v for _, v in train_rows]), np.array([c for c, _ in train_rows]), len(order))
    np.testing.assert_allclose(built.head.weight, expected.weight, atol=1e-4)
    np.testing.assert_allclose(built.head.bias, expected.bias, atol=1e-4)
    train = np.array([pid not in held for pid in ids])
    lab = np.array([order[d["keys"][c]] for c in labels])  # type: ignore[index]
    # Held-out products are classified from what the head learned on the others.
    pred = built.head.log_probs(x[~train]).argmax(axis=1)  # type: ignore[index]
    assert (pred == lab[~train]).mean() >= 0.75  # six categories: chance is ~0.2
    every = CategoryIndex.build(h.retriever.store, h.retriever.text_encoder, head=True)
    assert every.head is not None and not np.allclose(every.head.weight, built.head.weight, atol=1e-3)
    with pytest.raises(RetrievalError):
        HierarchicalRetriever(h.retriever, h.categories, Level1Config(representation="head"))


def test_category_index_round_trip_keeps_clusters_and_head(
    synthetic: tuple[HierarchicalRetriever, dict[str, object]], tmp_path: Path
) -> None:
    h, _ = synthetic
    built = CategoryIndex.build(h.retriever.store, h.retriever.text_encoder, clusters=3, head=True)
    built.save(tmp_path / "c.npz")
    again = CategoryIndex.load(tmp_path / "c.npz")
    assert again.head is not None and built.head is not None and again.cluster_image is not None
    np.testing.assert_array_equal(again.cluster_owner, built.cluster_owner)  # type: ignore[arg-type]
    np.testing.assert_allclose(again.head.weight, built.head.weight)


def test_level2_with_vote_and_prior_equals_brute_force(
    synthetic: tuple[HierarchicalRetriever, dict[str, object]],
) -> None:
    """Soft prior + vote: the k best of the (k * candidates) most similar kept products by sim + beta * log P."""
    from retrieval.hierarchical import calibrated

    h0, d = synthetic
    x, ids, labels, keys = d["x"], d["ids"], d["labels"], d["keys"]
    cfg = Level1Config(policy="mass", mass=0.9, max_fraction=1.0, neighbours=8, neighbour_weight=0.7,
                       prior_weight=0.05, candidates=3, anchor_hits=1)  # fmt: skip
    h = HierarchicalRetriever(h0.retriever, h0.categories, cfg)
    rng = np.random.default_rng(21)
    for q in unit(rng.standard_normal((6, DIM))):
        res = h.search_vectors({IMAGE_VECTOR: q}, k=5)
        assert res.level1 is not None and res.level1.scores is not None
        probs = dict(zip(h.categories.keys, calibrated(res.level1.scores, cfg.temperature), strict=True))
        kept_probs = {c: probs[c] for c in res.level1.kept}
        pool = brute_force_inside(d, q, res.level1.kept, 15)
        sims = {pid: float(x[list(ids).index(pid)] @ q) for pid in pool}  # type: ignore[index, arg-type]
        lab = {pid: keys[labels[list(ids).index(pid)]] for pid in pool}  # type: ignore[index, arg-type]
        oracle = sorted(pool, key=lambda p: -(sims[p] + 0.05 * np.log(max(kept_probs[lab[p]], 1e-6))))[:5]
        assert [hit.product_id for hit in res.hits] == oracle
