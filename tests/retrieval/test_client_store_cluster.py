"""The cluster path of :class:`ClientStore`: the collection's layout, its payload indexes, idempotent retried writes.

``QdrantClient(":memory:")`` speaks the client API but ignores sharding, so the layout is asserted on the
arguments the store sends (the client's methods are wrapped by mocks that still call through); the data a
write leaves behind is asserted on the store itself, against a store that was written once, cleanly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

import retrieval.client_store as client_store_module
from api.components import build_store
from api.settings import Settings
from retrieval.catalogue import Product
from retrieval.client_store import ClientStore, ClusterLayout
from retrieval.errors import StoreError
from retrieval.indexer import product_payload
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR, IndexManifest, SearchFilter, VectorRecord, point_id

DIM = 8
CATS = [("Apparel", "Topwear", "Shirts"), ("Apparel", "Topwear", "Kurtas"), ("Footwear", "Shoes", "Heels")]
COLOURS = ["Red", "Blue", "Black"]
LAYOUT = ClusterLayout(shard_number=6, replication_factor=2, write_consistency_factor=1)


def manifest() -> IndexManifest:
    return IndexManifest(
        text_encoder="txt@1",
        text_dim=DIM,
        image_encoder="img@1",
        image_dim=DIM,
        category_levels=["master", "sub", "article"],
        attribute_fields=["base_colour", "gender"],
    )


def batch(n: int = 40, seed: int = 3) -> list[VectorRecord]:
    """Products as the indexer stores them (its own payload), with random unit vectors."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        product = Product(
            f"p{i}", f"product {i}", CATS[i % 3], {"base_colour": COLOURS[i % 3], "gender": "Women"}, None
        )
        vecs = {}
        for name in (IMAGE_VECTOR, TEXT_VECTOR):
            v = rng.standard_normal(DIM).astype(np.float32)
            vecs[name] = v / np.linalg.norm(v)
        out.append(VectorRecord(product.product_id, vecs, product_payload(product)))
    return out


def spied_client() -> QdrantClient:
    """An in-memory client whose write and schema calls are recorded and still carried out."""
    client = QdrantClient(":memory:")
    for name in ("create_collection", "create_payload_index", "upsert"):
        setattr(client, name, mock.Mock(wraps=getattr(client, name)))
    return client


def snapshot(store: ClientStore, client: QdrantClient) -> dict[str, tuple[dict[str, Any], dict[str, list[float]]]]:
    """Every point as stored: its id, payload and vectors (the oracle a retried write must leave unchanged)."""
    points, _ = client.scroll("products", limit=10_000, with_payload=True, with_vectors=True)
    out = {}
    for p in points:
        vec = p.vector if isinstance(p.vector, dict) else {}
        out[str(p.id)] = (dict(p.payload or {}), {n: list(np.round(vec[n], 6)) for n in sorted(vec)})  # type: ignore[arg-type]
    assert store.count() == len(out)
    return out


@pytest.fixture
def clean() -> Iterator[dict[str, tuple[dict[str, Any], dict[str, list[float]]]]]:
    """The state after writing the batch exactly once, without failures."""
    client = QdrantClient(":memory:")
    store = ClientStore(client, "products", layout=LAYOUT)
    store.create(manifest())
    store.upsert(batch())
    yield snapshot(store, client)
    store.close()


def test_cluster_layout_and_payload_indexes_are_sent_on_create() -> None:
    client = spied_client()
    store = ClientStore(client, "products", layout=LAYOUT)
    store.create(manifest())

    client.create_collection.assert_called_once()  # type: ignore[attr-defined]
    kwargs = client.create_collection.call_args.kwargs  # type: ignore[attr-defined]
    assert (kwargs["shard_number"], kwargs["replication_factor"], kwargs["write_consistency_factor"]) == (6, 2, 1)
    assert kwargs["vectors_config"] == {
        IMAGE_VECTOR: qm.VectorParams(size=DIM, distance=qm.Distance.COSINE),
        TEXT_VECTOR: qm.VectorParams(size=DIM, distance=qm.Distance.COSINE),
    }

    calls = client.create_payload_index.call_args_list  # type: ignore[attr-defined]
    indexed = {c.args[1]: c.args[2] for c in calls}
    assert len(indexed) == len(calls)  # each field once
    assert set(indexed.values()) == {qm.PayloadSchemaType.KEYWORD}
    # Oracle: every payload key a level-1 or level-2 filter can match (SearchFilter.conditions) is indexed.
    filters = [SearchFilter(categories=["x"], category_depth=d) for d in range(3)]
    filters += [SearchFilter(categories=["x"]), SearchFilter(category_prefix=["Apparel", "Topwear"])]
    filters += [SearchFilter(attributes={"base_colour": ["Red"], "gender": ["Women"]})]
    keys = {key for f in filters for key, _ in f.conditions()}
    assert keys == {"cat_0", "cat_1", "cat_2", "category_path", "attributes.base_colour", "attributes.gender"}
    assert keys | {"product_id"} == set(indexed)
    # ...and the indexer's payload holds every one of them, so the indexes are not on absent keys.
    payload = batch(1)[0].payload
    for key in indexed:
        head, _, tail = key.partition(".")
        assert (payload[head][tail] if tail else payload[head]) is not None
    # The in-memory server answers filtered queries on those keys.
    store.upsert(batch())
    assert store.count(SearchFilter(categories=["Apparel > Topwear"], category_depth=1)) == 27
    assert store.count(SearchFilter(category_prefix=["Footwear"], attributes={"base_colour": ["Black"]})) == 13


def test_unset_layout_leaves_sharding_to_the_server() -> None:
    client = spied_client()
    ClientStore(client, "products").create(manifest())
    kwargs = client.create_collection.call_args.kwargs  # type: ignore[attr-defined]
    assert [kwargs.get(k) for k in ("shard_number", "replication_factor", "write_consistency_factor")] == [None] * 3


def test_settings_reach_the_collection_through_build_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clients: list[QdrantClient] = []

    def fake_client(**kwargs: Any) -> QdrantClient:
        assert kwargs["url"] == "http://qdrant:6333" and kwargs["api_key"] == "k"
        clients.append(spied_client())
        return clients[-1]

    monkeypatch.setattr(client_store_module, "QdrantClient", fake_client)
    env = {
        "TANDEM_QDRANT__URL": "http://qdrant:6333",
        "TANDEM_QDRANT__API_KEY": "k",
        "TANDEM_QDRANT__SHARD_NUMBER": "6",
        "TANDEM_QDRANT__REPLICATION_FACTOR": "2",
        "TANDEM_QDRANT__WRITE_CONSISTENCY_FACTOR": "1",
        "TANDEM_QDRANT__WRITE_RETRIES": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = build_store(Settings(_env_file=None, home=tmp_path))  # type: ignore[call-arg]
    assert isinstance(store, ClientStore)
    store.create(manifest())
    kwargs = clients[0].create_collection.call_args.kwargs  # type: ignore[attr-defined]
    assert (kwargs["shard_number"], kwargs["replication_factor"], kwargs["write_consistency_factor"]) == (6, 2, 1)
    # write_retries=0 from the settings: one failed attempt is final.
    clients[0].upsert.side_effect = ResponseHandlingException(httpx.ConnectError("node down"))  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="after 1 attempt"):
        store.upsert(batch(2))


def test_settings_refuse_a_write_consistency_above_the_replicas() -> None:
    with pytest.raises(ValidationError, match="exceeds replication_factor"):
        Settings(
            _env_file=None, qdrant={"url": "http://q:6333", "replication_factor": 2, "write_consistency_factor": 3}
        )  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="exceeds replication_factor"):
        Settings(_env_file=None, qdrant={"write_consistency_factor": 2})  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings(_env_file=None, qdrant={"shard_number": 0})  # type: ignore[call-arg]
    ok = Settings(_env_file=None, qdrant={"replication_factor": 2, "write_consistency_factor": 2})  # type: ignore[call-arg]
    assert ok.qdrant.write_consistency_factor == 2


def test_upserting_the_same_batch_twice_changes_nothing(clean: dict[str, Any]) -> None:
    client = QdrantClient(":memory:")
    store = ClientStore(client, "products", layout=LAYOUT)
    store.create(manifest())
    store.upsert(batch())
    store.upsert(batch())
    after = snapshot(store, client)
    assert after == clean
    assert len(after) == 40
    assert set(after) == {point_id(f"p{i}") for i in range(40)}


class _DiesHalfway:
    """An upsert that writes the first half of its points, then fails as a node lost mid-write would (once)."""

    def __init__(self, real: Any, error: Exception, failures: int = 1) -> None:
        self.real, self.error, self.failures, self.calls = real, error, failures, 0

    def __call__(self, collection: str, points: list[qm.PointStruct], **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            self.real(collection, points[: len(points) // 2], **kwargs)
            raise self.error
        return self.real(collection, points, **kwargs)


def test_a_batch_interrupted_then_retried_by_the_store_leaves_the_clean_state(clean: dict[str, Any]) -> None:
    client = QdrantClient(":memory:")
    sleeps: list[float] = []
    store = ClientStore(client, "products", layout=LAYOUT, write_retries=2, sleep=sleeps.append)
    store.create(manifest())
    dies = _DiesHalfway(client.upsert, ResponseHandlingException(httpx.ReadTimeout("peer gone")))
    client.upsert = dies  # type: ignore[method-assign]
    store.upsert(batch())
    assert dies.calls == 2
    assert sleeps == [0.5]
    assert snapshot(store, client) == clean


def test_a_batch_interrupted_then_rerun_by_the_caller_leaves_the_clean_state(clean: dict[str, Any]) -> None:
    client = QdrantClient(":memory:")
    store = ClientStore(client, "products", write_retries=0, sleep=lambda s: pytest.fail("no retry expected"))
    store.create(manifest())
    real = client.upsert
    client.upsert = _DiesHalfway(real, UnexpectedResponse(503, "Service Unavailable", b"", httpx.Headers()))  # type: ignore[method-assign]
    with pytest.raises(StoreError, match="503") as info:
        store.upsert(batch())
    assert isinstance(info.value.__cause__, UnexpectedResponse)
    assert 0 < store.count() < 40  # the first attempt left part of the batch
    store.upsert(batch())  # what re-running `tandem index` sends again
    assert snapshot(store, client) == clean


def test_a_client_error_is_not_retried_and_retries_are_bounded() -> None:
    client = QdrantClient(":memory:")
    sleeps: list[float] = []
    store = ClientStore(client, "products", write_retries=3, sleep=sleeps.append)
    store.create(manifest())
    bad = UnexpectedResponse(400, "Bad Request", b'{"status":{"error":"wrong vector size"}}', httpx.Headers())
    client.upsert = mock.Mock(side_effect=bad)  # type: ignore[method-assign]
    with pytest.raises(StoreError, match="after 1 attempt"):
        store.upsert(batch(2))
    assert sleeps == []

    client.upsert = mock.Mock(side_effect=ConnectionError("refused"))  # type: ignore[method-assign]
    with pytest.raises(StoreError, match="after 4 attempt") as info:
        store.upsert(batch(2))
    assert isinstance(info.value.__cause__, ConnectionError)
    assert client.upsert.call_count == 4
    assert sleeps == [0.5, 1.0, 2.0]


def test_a_refused_create_is_a_store_error() -> None:
    client = QdrantClient(":memory:")
    refusal = UnexpectedResponse(400, "Bad Request", b"shard_number too large", httpx.Headers())
    client.create_collection = mock.Mock(side_effect=refusal)  # type: ignore[method-assign]
    store = ClientStore(client, "products", layout=LAYOUT)
    with pytest.raises(StoreError, match="cannot create") as info:
        store.create(manifest())
    assert info.value.__cause__ is refusal
    assert store.manifest() is None
