"""The vector store interface and the records that cross it.

Two implementations sit behind :class:`VectorStore`: Qdrant Edge in-process (the
embedded default, :mod:`retrieval.edge_store`) and a Qdrant server or cluster
through ``qdrant-client`` (:mod:`retrieval.client_store`).

Example:
    >>> store = open_store(url=None, path=Path("var/qdrant"), collection="products")  # doctest: +SKIP
    >>> store.search(vec, using="image", k=10)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, Field

from retrieval.errors import EncoderMismatchError, IndexNotFoundError, StoreError

__all__ = [
    "CATEGORY_FIELD",
    "IMAGE_VECTOR",
    "TEXT_VECTOR",
    "IndexManifest",
    "SearchFilter",
    "StoredHit",
    "VectorRecord",
    "VectorStore",
    "derived_cache_key",
    "hits_from_points",
    "level_field",
    "point_id",
    "vectors_by_product",
]

IMAGE_VECTOR = "image"
TEXT_VECTOR = "text"
# Full category path ("A > B > C"): the key of a category, indexed as a keyword.
CATEGORY_FIELD = "category_path"
_NAMESPACE = uuid.UUID("6f1c9a52-8d7e-4f0b-9a63-3c2f5b7d1e20")


def level_field(depth: int) -> str:
    """Payload field holding the category prefix of length ``depth + 1`` (``cat_0`` is the top level)."""
    return f"cat_{depth}"


def point_id(product_id: str) -> str:
    """Deterministic Qdrant point id for a product id, so re-indexing overwrites instead of duplicating."""
    return str(uuid.uuid5(_NAMESPACE, product_id))


class IndexManifest(BaseModel):
    """What built an index: checked before every write and every query."""

    text_encoder: str
    text_dim: int
    image_encoder: str
    image_dim: int
    category_levels: list[str] = Field(default_factory=list)
    attribute_fields: list[str] = Field(default_factory=list)
    catalogue: str = ""
    image_text_aligned: bool = Field(
        default=False, description="The image tower was trained into the text encoder's space (cross-modal scores)."
    )
    schema_version: int = 1

    def check_encoders(self, *, text_encoder: str | None = None, image_encoder: str | None = None) -> None:
        """Raise :class:`EncoderMismatchError` if a query encoder differs from the one that built the index."""
        if text_encoder is not None and text_encoder != self.text_encoder:
            raise EncoderMismatchError(
                f"the index was built with text encoder {self.text_encoder}, not {text_encoder}; "
                "re-index with `tandem index --rebuild` or configure the original encoder"
            )
        if image_encoder is not None and image_encoder != self.image_encoder:
            raise EncoderMismatchError(
                f"the index was built with image encoder {self.image_encoder}, not {image_encoder}; "
                "re-index with `tandem index --rebuild` or configure the original encoder"
            )


@dataclass(frozen=True, slots=True)
class VectorRecord:
    """One product as stored: its named vectors and payload."""

    product_id: str
    vectors: Mapping[str, np.ndarray]
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StoredHit:
    """A search result straight from the store."""

    product_id: str
    score: float
    payload: dict[str, Any]


class _ScoredPointLike(Protocol):
    @property
    def id(self) -> Any: ...
    @property
    def score(self) -> float: ...
    @property
    def payload(self) -> Mapping[str, Any] | None: ...


def hits_from_points(points: Sequence[_ScoredPointLike]) -> list[StoredHit]:
    """Qdrant scored points (Edge or client) to :class:`StoredHit`; the product id comes from the payload."""
    out = []
    for p in points:
        payload = dict(p.payload or {})
        out.append(StoredHit(product_id=str(payload.get("product_id", p.id)), score=float(p.score), payload=payload))
    return out


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """Restrict a search: to any of a set of categories, to a category prefix, to attribute values.

    ``categories`` are category keys (``"A > B"``) at depth ``category_depth`` (0-based; ``None`` =
    the full path). ``attributes`` maps an attribute name to the accepted values (any matches).
    """

    categories: Sequence[str] | None = None
    category_depth: int | None = None
    category_prefix: Sequence[str] | None = None
    attributes: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.categories and not self.category_prefix and not self.attributes

    def conditions(self) -> list[tuple[str, list[str]]]:
        """The filter as (payload key, accepted values) pairs, all of which must match."""
        out: list[tuple[str, list[str]]] = []
        if self.categories:
            key = CATEGORY_FIELD if self.category_depth is None else level_field(self.category_depth)
            out.append((key, list(self.categories)))
        if self.category_prefix:
            out.append((level_field(len(self.category_prefix) - 1), [" > ".join(self.category_prefix)]))
        for name, values in self.attributes.items():
            out.append((f"attributes.{name}", list(values)))
        return out


def vectors_by_product(records: Sequence[Any], using: str) -> dict[str, np.ndarray]:
    """``{product_id: vector}`` from retrieved points (Qdrant Edge or qdrant-client records) that hold ``using``."""
    out: dict[str, np.ndarray] = {}
    for r in records:
        vec = r.vector if isinstance(r.vector, dict) else {}
        if using in vec:
            out[str((r.payload or {})["product_id"])] = np.asarray(vec[using], dtype=np.float32)
    return out


class VectorStore(Protocol):
    """The narrow interface every Qdrant deployment is used through."""

    def manifest(self) -> IndexManifest | None:
        """The manifest of the existing index, or None if there is no index yet."""
        ...

    def create(self, manifest: IndexManifest, *, recreate: bool = False) -> None:
        """Create the collection (vectors, payload indexes) and record ``manifest``."""
        ...

    def existing(self, product_ids: Sequence[str]) -> set[str]:
        """Which of ``product_ids`` are already stored."""
        ...

    def upsert(self, records: Sequence[VectorRecord]) -> None: ...

    def vectors(self, product_ids: Sequence[str], *, using: str) -> dict[str, np.ndarray]:
        """The stored ``using`` vector of each of ``product_ids`` that exists (for MMR and diversity)."""
        ...

    def search(
        self, vector: np.ndarray, *, using: str, k: int, filter: SearchFilter | None = None
    ) -> list[StoredHit]: ...

    def search_fused(
        self, queries: Mapping[str, np.ndarray], *, k: int, filter: SearchFilter | None = None, prefetch: int = 100
    ) -> list[StoredHit]:
        """Search several named vectors and fuse their rankings (reciprocal rank fusion)."""
        ...

    def count(self, filter: SearchFilter | None = None) -> int: ...

    def scroll(
        self, *, vectors: Sequence[str], batch: int = 2048
    ) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        """Every stored point as (payload, named vectors), in pages of ``batch``."""
        ...

    def finalize(self) -> None:
        """Make written data durable and searchable at full speed (flush, build HNSW)."""
        ...

    def close(self) -> None: ...


def manifest_path(directory: Path) -> Path:
    return directory / "tandem_manifest.json"


def derived_cache_key(store: VectorStore, *parts: object) -> str | None:
    """A cache key for something derived from the index (level-1 categories, fingerprints): it changes with
    the index's manifest, its size and ``parts`` (the derivation's options and version). None when the
    store cannot say its size: then nothing is cached.

    Example:
        >>> derived_cache_key(store, "v2", 4)  # doctest: +SKIP
        '3f0c…'
    """
    manifest = store.manifest()
    if manifest is None:
        raise IndexNotFoundError("there is no index yet: run `tandem index` first")
    try:
        n = store.count()
    except StoreError:
        return None  # a store that cannot count: its size is unknown, so no cache can be trusted
    text = "|".join([manifest.model_dump_json(), str(n), *(str(p) for p in parts)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
