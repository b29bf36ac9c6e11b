"""A Qdrant server or cluster through ``qdrant-client`` (scale-out; chosen when ``TANDEM_QDRANT__URL`` is set).

The manifest lives in the collection's own metadata, so every Tandem process that
talks to the cluster sees the same record of what built the index. On a cluster the
collection is created with a :class:`ClusterLayout` (shards, replicas, write
consistency). Writes are idempotent: a point's id derives from its product id and its
vectors from the product, so a batch retried after a node failure (by the store, or by
re-running ``tandem index``) overwrites what the first attempt wrote and adds nothing.

Example:
    >>> from qdrant_client import QdrantClient
    >>> layout = ClusterLayout(shard_number=6, replication_factor=2, write_consistency_factor=1)
    >>> store = ClientStore(QdrantClient(url="http://qdrant:6333"), "products", layout=layout)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ApiException, ResponseHandlingException, UnexpectedResponse

from retrieval.edge_store import RRF_K
from retrieval.errors import IndexNotFoundError, StoreError
from retrieval.store import (
    CATEGORY_FIELD,
    IMAGE_VECTOR,
    TEXT_VECTOR,
    IndexManifest,
    SearchFilter,
    StoredHit,
    VectorRecord,
    hits_from_points,
    level_field,
    point_id,
    vectors_by_product,
)

__all__ = ["ClientStore", "ClusterLayout"]

_MANIFEST_KEY = "tandem_manifest"
# What qdrant-client raises for transport and server errors; translated to StoreError at this boundary.
_CLIENT_ERRORS = (
    ApiException,
    ResponseHandlingException,
    UnexpectedResponse,
    ConnectionError,
    TimeoutError,
    ValueError,
)
# Worth another try of an idempotent write: the request may not have reached the cluster, or a node holding a
# replica went away mid-write (Qdrant answers 5xx while it re-elects); a 4xx is the request's own fault.
_TRANSIENT_ERRORS = (ResponseHandlingException, ConnectionError, TimeoutError)
_RETRY_BACKOFF_S = 0.5


def _transient(exc: Exception) -> bool:
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code >= 500
    return isinstance(exc, _TRANSIENT_ERRORS)


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    """How a new collection is spread over a Qdrant cluster; ``None`` leaves a parameter to the server's default.

    Example:
        >>> ClusterLayout(shard_number=6, replication_factor=2).write_consistency_factor is None
        True
    """

    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None


def _client_filter(flt: SearchFilter | None) -> qm.Filter | None:
    if flt is None or flt.is_empty():
        return None
    must: list[qm.Condition] = [
        qm.FieldCondition(key=key, match=qm.MatchAny(any=values)) for key, values in flt.conditions()
    ]
    return qm.Filter(must=must)


class ClientStore:
    """:class:`~retrieval.store.VectorStore` over one collection of a Qdrant server, through ``qdrant-client``."""

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        *,
        hnsw_ef: int | None = None,
        layout: ClusterLayout | None = None,
        write_retries: int = 2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._collection = collection
        self._params = qm.SearchParams(hnsw_ef=hnsw_ef) if hnsw_ef else None
        self._layout = layout or ClusterLayout()
        self._write_retries = max(0, write_retries)
        self._sleep = sleep
        self._manifest: IndexManifest | None = None
        try:
            if client.collection_exists(collection):
                meta = client.get_collection(collection).config.metadata or {}
                if _MANIFEST_KEY in meta:
                    self._manifest = IndexManifest.model_validate(meta[_MANIFEST_KEY])
        except _CLIENT_ERRORS as exc:
            raise StoreError(f"cannot reach Qdrant collection {collection!r}: {exc}") from exc

    @classmethod
    def connect(
        cls,
        url: str,
        collection: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        hnsw_ef: int | None = None,
        check_compatibility: bool = True,
        layout: ClusterLayout | None = None,
        write_retries: int = 2,
    ) -> Self:
        """A store over the Qdrant server at ``url``; every call has a deadline of ``timeout_s`` (whole seconds, up).

        A server that accepts connections and never answers is a :class:`StoreError` within it, never a hang.
        """
        client = QdrantClient(
            url=url, api_key=api_key, timeout=max(1, math.ceil(timeout_s)), check_compatibility=check_compatibility
        )
        return cls(client, collection, hnsw_ef=hnsw_ef, layout=layout, write_retries=write_retries)

    def _require(self) -> None:
        if self._manifest is None:
            raise IndexNotFoundError(f"no Tandem index in Qdrant collection {self._collection!r}: run `tandem index`")

    def manifest(self) -> IndexManifest | None:
        return self._manifest

    def create(self, manifest: IndexManifest, *, recreate: bool = False) -> None:
        try:
            if self._client.collection_exists(self._collection):
                if not recreate and self._manifest is not None:
                    raise StoreError(f"Qdrant collection {self._collection!r} already exists")
                self._client.delete_collection(self._collection)
            self._client.create_collection(
                self._collection,
                vectors_config={
                    IMAGE_VECTOR: qm.VectorParams(size=manifest.image_dim, distance=qm.Distance.COSINE),
                    TEXT_VECTOR: qm.VectorParams(size=manifest.text_dim, distance=qm.Distance.COSINE),
                },
                metadata={_MANIFEST_KEY: manifest.model_dump()},
                shard_number=self._layout.shard_number,
                replication_factor=self._layout.replication_factor,
                write_consistency_factor=self._layout.write_consistency_factor,
            )
            # Keyword indexes on every key a filter matches (SearchFilter.conditions): level 1 scores categories by
            # cat_<depth> or category_path, level 2 searches inside them, attributes narrow further.
            fields = [CATEGORY_FIELD, "product_id"]
            fields += [level_field(d) for d in range(len(manifest.category_levels))]
            fields += [f"attributes.{name}" for name in manifest.attribute_fields]
            for name in fields:
                self._client.create_payload_index(self._collection, name, qm.PayloadSchemaType.KEYWORD)
        except _CLIENT_ERRORS as exc:
            raise StoreError(f"cannot create Qdrant collection {self._collection!r}: {exc}") from exc
        self._manifest = manifest

    def existing(self, product_ids: Sequence[str]) -> set[str]:
        self._require()
        try:
            records = self._client.retrieve(
                self._collection, [point_id(p) for p in product_ids], with_payload=["product_id"], with_vectors=False
            )
        except _CLIENT_ERRORS as exc:
            raise StoreError(f"Qdrant retrieve failed: {exc}") from exc
        return {str((r.payload or {})["product_id"]) for r in records}

    def vectors(self, product_ids: Sequence[str], *, using: str) -> dict[str, np.ndarray]:
        self._require()
        try:
            records = self._client.retrieve(
                self._collection, [point_id(p) for p in product_ids], with_payload=["product_id"], with_vectors=[using]
            )
        except _CLIENT_ERRORS as exc:
            raise StoreError(f"Qdrant retrieve failed: {exc}") from exc
        return vectors_by_product(records, using)

    def upsert(self, records: Sequence[VectorRecord]) -> None:
        self._require()
        points = [
            qm.PointStruct(
                id=point_id(r.product_id),
                vector={name: np.asarray(v, dtype=np.float32).tolist() for name, v in r.vectors.items()},
                payload=dict(r.payload),
            )
            for r in records
        ]
        for attempt in range(self._write_retries + 1):
            try:
                self._client.upsert(self._collection, points, wait=True)
                return
            except _CLIENT_ERRORS as exc:
                if attempt == self._write_retries or not _transient(exc):
                    raise StoreError(f"Qdrant upsert failed after {attempt + 1} attempt(s): {exc}") from exc
                self._sleep(_RETRY_BACKOFF_S * 2**attempt)

    def search(self, vector: np.ndarray, *, using: str, k: int, filter: SearchFilter | None = None) -> list[StoredHit]:
        self._require()
        try:
            res = self._client.query_points(
                self._collection,
                query=np.asarray(vector, dtype=np.float32).tolist(),
                using=using,
                limit=k,
                query_filter=_client_filter(filter),
                search_params=self._params,
                with_payload=True,
            )
        except _CLIENT_ERRORS as exc:
            raise StoreError(f"Qdrant query failed: {exc}") from exc
        return hits_from_points(res.points)

    def search_fused(
        self, queries: Mapping[str, np.ndarray], *, k: int, filter: SearchFilter | None = None, prefetch: int = 100
    ) -> list[StoredHit]:
        self._require()
        flt = _client_filter(filter)
        prefetches = [
            qm.Prefetch(
                query=np.asarray(v, dtype=np.float32).tolist(),
                using=name,
                limit=max(prefetch, k),
                filter=flt,
                params=self._params,
            )
            for name, v in queries.items()
        ]
        try:
            res = self._client.query_points(
                self._collection,
                prefetch=prefetches,
                query=qm.RrfQuery(rrf=qm.Rrf(k=RRF_K)),
                limit=k,
                with_payload=True,
            )
        except _CLIENT_ERRORS as exc:
            raise StoreError(f"Qdrant fused query failed: {exc}") from exc
        return hits_from_points(res.points)

    def count(self, filter: SearchFilter | None = None) -> int:
        self._require()
        try:
            return int(self._client.count(self._collection, count_filter=_client_filter(filter), exact=True).count)
        except _CLIENT_ERRORS as exc:
            raise StoreError(f"Qdrant count failed: {exc}") from exc

    def scroll(
        self, *, vectors: Sequence[str], batch: int = 2048
    ) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        self._require()
        offset: Any = None
        while True:
            try:
                records, offset = self._client.scroll(
                    self._collection, limit=batch, offset=offset, with_payload=True, with_vectors=list(vectors)
                )
            except _CLIENT_ERRORS as exc:
                raise StoreError(f"Qdrant scroll failed: {exc}") from exc
            for r in records:
                vec = r.vector if isinstance(r.vector, dict) else {}
                yield dict(r.payload or {}), {n: np.asarray(vec[n], dtype=np.float32) for n in vectors if n in vec}
            if offset is None or not records:
                return

    def finalize(self) -> None:
        # A Qdrant server optimises and builds HNSW in the background; nothing to do here.
        return None

    def close(self) -> None:
        self._client.close()
