"""One suite, both Qdrant deployments: Qdrant Edge in-process and qdrant-client (``:memory:`` speaks its API).

NumPy brute force is the oracle for every search.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from retrieval.client_store import ClientStore
from retrieval.edge_store import EdgeStore
from retrieval.errors import EncoderMismatchError, IndexNotFoundError, StoreError
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR, IndexManifest, SearchFilter, VectorRecord, VectorStore

N, DIM = 400, 24
CATS = [("Apparel", "Topwear", "Shirts"), ("Apparel", "Topwear", "Kurtas"), ("Footwear", "Shoes", "Heels")]
COLOURS = ["Red", "Blue", "Black", "Green"]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> dict[str, object]:
    rng = np.random.default_rng(7)
    return {
        "ids": [f"p{i}" for i in range(N)],
        IMAGE_VECTOR: unit(rng, N),
        TEXT_VECTOR: unit(rng, N),
        "cat": [CATS[i % 3] for i in range(N)],
        "colour": [COLOURS[i % 4] for i in range(N)],
        "queries": unit(rng, 8),
    }


def manifest(image_encoder: str = "img@1") -> IndexManifest:
    return IndexManifest(
        text_encoder="txt@1",
        text_dim=DIM,
        image_encoder=image_encoder,
        image_dim=DIM,
        category_levels=["a", "b", "c"],
        attribute_fields=["base_colour"],
    )


def records(data: dict[str, object], idx: range) -> list[VectorRecord]:
    ids: list[str] = data["ids"]  # type: ignore[assignment]
    cats: list[tuple[str, ...]] = data["cat"]  # type: ignore[assignment]
    colours: list[str] = data["colour"]  # type: ignore[assignment]
    out = []
    for i in idx:
        cat = cats[i]
        payload = {
            "product_id": ids[i],
            "title": f"product {i}",
            "category": list(cat),
            "category_path": " > ".join(cat),
            "cat_0": cat[0],
            "cat_1": " > ".join(cat[:2]),
            "cat_2": " > ".join(cat),
            "attributes": {"base_colour": colours[i]},
        }
        vectors = {IMAGE_VECTOR: data[IMAGE_VECTOR][i], TEXT_VECTOR: data[TEXT_VECTOR][i]}  # type: ignore[index]
        out.append(VectorRecord(ids[i], vectors, payload))
    return out


@pytest.fixture(params=["edge", "client"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    s: VectorStore
    if request.param == "edge":
        s = EdgeStore(tmp_path / "edge")
    else:
        s = ClientStore(QdrantClient(":memory:"), "products")
    yield s
    s.close()


@pytest.fixture
def filled(store: VectorStore, data: dict[str, object]) -> VectorStore:
    store.create(manifest())
    recs = records(data, range(N))
    for start in range(0, N, 100):
        store.upsert(recs[start : start + 100])
    store.finalize()
    return store


def oracle(data: dict[str, object], q: np.ndarray, using: str, k: int, mask: np.ndarray | None = None) -> list[str]:
    scores = data[using] @ q  # type: ignore[operator]
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    order = np.argsort(-scores, kind="stable")[:k]
    ids: list[str] = data["ids"]  # type: ignore[assignment]
    return [ids[i] for i in order if np.isfinite(scores[i])]


def test_no_index_yet(store: VectorStore) -> None:
    assert store.manifest() is None
    with pytest.raises(IndexNotFoundError):
        store.search(np.ones(DIM, np.float32), using=IMAGE_VECTOR, k=3)


@pytest.mark.parametrize("using", [IMAGE_VECTOR, TEXT_VECTOR])
def test_top_k_matches_brute_force(filled: VectorStore, data: dict[str, object], using: str) -> None:
    for q in data["queries"]:  # type: ignore[attr-defined]
        hits = filled.search(q, using=using, k=10)
        assert [h.product_id for h in hits] == oracle(data, q, using, 10)
        expected = np.sort(data[using] @ q)[::-1][:10]  # type: ignore[operator]
        np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-4)


def test_filters_match_brute_force(filled: VectorStore, data: dict[str, object]) -> None:
    cats = np.array([" > ".join(c) for c in data["cat"]])  # type: ignore[attr-defined]
    colours = np.array(data["colour"])
    q = data["queries"][0]  # type: ignore[index]
    cases = [
        (SearchFilter(categories=["Apparel > Topwear > Kurtas"]), cats == "Apparel > Topwear > Kurtas"),
        (SearchFilter(category_prefix=["Apparel"]), np.char.startswith(cats, "Apparel >")),
        (
            SearchFilter(category_prefix=["Apparel", "Topwear"], attributes={"base_colour": ["Red", "Blue"]}),
            np.char.startswith(cats, "Apparel > Topwear") & np.isin(colours, ["Red", "Blue"]),
        ),
    ]
    for flt, mask in cases:
        hits = filled.search(q, using=IMAGE_VECTOR, k=15, filter=flt)
        assert [h.product_id for h in hits] == oracle(data, q, IMAGE_VECTOR, 15, mask)
        assert filled.count(flt) == int(mask.sum())
    assert filled.count() == N
    by_depth = SearchFilter(categories=["Apparel > Topwear", "Footwear > Shoes"], category_depth=1)
    assert filled.count(by_depth) == N


def test_scroll_returns_every_point_with_vectors(filled: VectorStore, data: dict[str, object]) -> None:
    seen = {}
    for payload, vectors in filled.scroll(vectors=[IMAGE_VECTOR], batch=64):
        seen[payload["product_id"]] = vectors[IMAGE_VECTOR]
    ids: list[str] = data["ids"]  # type: ignore[assignment]
    assert sorted(seen) == sorted(ids)
    np.testing.assert_allclose(seen["p9"], data[IMAGE_VECTOR][9], atol=1e-5)  # type: ignore[index]


def test_vectors_by_id_match_what_was_stored(filled: VectorStore, data: dict[str, object]) -> None:
    got = filled.vectors(["p3", "p17", "nope"], using=TEXT_VECTOR)
    assert sorted(got) == ["p17", "p3"]
    np.testing.assert_allclose(got["p17"], data[TEXT_VECTOR][17], atol=1e-5)  # type: ignore[index]
    assert filled.vectors([], using=IMAGE_VECTOR) == {}


def test_fused_search_is_reciprocal_rank_fusion(filled: VectorStore, data: dict[str, object]) -> None:
    q_img, q_txt = data["queries"][1], data["queries"][2]  # type: ignore[index]
    prefetch = 50
    rrf: dict[str, float] = {}
    for using, q in ((IMAGE_VECTOR, q_img), (TEXT_VECTOR, q_txt)):
        for rank, pid in enumerate(oracle(data, q, using, prefetch)):
            rrf[pid] = rrf.get(pid, 0.0) + 1.0 / (60 + rank)  # Qdrant counts ranks from 0
    hits = filled.search_fused({IMAGE_VECTOR: q_img, TEXT_VECTOR: q_txt}, k=10, prefetch=prefetch)
    expected = sorted(rrf.values(), reverse=True)[:10]
    np.testing.assert_allclose([h.score for h in hits], expected, rtol=1e-4)
    for h in hits:
        assert rrf[h.product_id] == pytest.approx(h.score, rel=1e-4)


def test_existing_and_idempotent_upsert(filled: VectorStore, data: dict[str, object]) -> None:
    assert filled.existing(["p1", "p2", "nope"]) == {"p1", "p2"}
    filled.upsert(records(data, range(10)))  # same ids again: overwrite, not duplicate
    assert filled.count() == N


def test_payload_comes_back(filled: VectorStore, data: dict[str, object]) -> None:
    q = data[IMAGE_VECTOR][5]  # type: ignore[index]
    top = filled.search(q, using=IMAGE_VECTOR, k=1)[0]
    assert top.product_id == "p5"
    assert top.payload["category"] == list(CATS[5 % 3])
    assert top.payload["attributes"] == {"base_colour": COLOURS[5 % 4]}


def test_manifest_persists_and_checks_encoders(filled: VectorStore) -> None:
    m = filled.manifest()
    assert m is not None and m.image_encoder == "img@1"
    m.check_encoders(text_encoder="txt@1", image_encoder="img@1")
    with pytest.raises(EncoderMismatchError, match="img@1"):
        m.check_encoders(image_encoder="img@2")


def test_edge_index_reopens_from_disk(tmp_path: Path, data: dict[str, object]) -> None:
    s = EdgeStore(tmp_path / "e")
    s.create(manifest())
    s.upsert(records(data, range(50)))
    s.finalize()
    s.close()
    again = EdgeStore(tmp_path / "e")
    assert again.manifest() == manifest()
    assert again.count() == 50
    q = data[TEXT_VECTOR][3]  # type: ignore[index]
    assert again.search(q, using=TEXT_VECTOR, k=1)[0].product_id == "p3"
    again.close()


def test_edge_index_open_twice_is_a_clear_error(tmp_path: Path, data: dict[str, object]) -> None:
    s = EdgeStore(tmp_path / "e")
    s.create(manifest())
    s.upsert(records(data, range(5)))
    s.finalize()
    s.close()
    first = EdgeStore(tmp_path / "e")
    try:
        with pytest.raises(StoreError, match="open in another process"):
            EdgeStore(tmp_path / "e")
    finally:
        first.close()
    EdgeStore(tmp_path / "e").close()  # free again once the first store is closed


def test_edge_engine_errors_are_store_errors(tmp_path: Path, data: dict[str, object]) -> None:
    # qdrant-edge raises bare Exception; a reader racing a writer that recreates the shard met one ("Shard is not
    # initialized") and a background loop died of it. The engine's own state is the cause here: its shard is closed
    # under the store, as a recreate does for a moment.
    s = EdgeStore(tmp_path / "e")
    s.create(manifest())
    s.upsert(records(data, range(5)))
    s._shard.close()  # type: ignore[union-attr]
    q = data[TEXT_VECTOR][0]  # type: ignore[index]
    calls = {
        "count": s.count,
        "query": lambda: s.search(q, using=TEXT_VECTOR, k=1),
        "retrieve": lambda: s.vectors(["p1"], using=TEXT_VECTOR),
        "scroll": lambda: list(s.scroll(vectors=[TEXT_VECTOR])),
        "upsert": lambda: s.upsert(records(data, range(1))),
    }
    for name, call in calls.items():
        with pytest.raises(StoreError, match=f"Qdrant Edge {name} failed"):
            call()
