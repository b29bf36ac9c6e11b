"""Query-time retrieval: encode a text and/or photo query and search the store.

Example:
    >>> retriever = Retriever(store, text_encoder, image_encoder)  # doctest: +SKIP
    >>> hits = retriever.search(SearchQuery(text="red kurta"), k=10)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from retrieval.encoders import ImageEncoder, TextEncoder
from retrieval.errors import IndexNotFoundError, InvalidQueryError
from retrieval.exact_match import ExactMatchIndex
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR, IndexManifest, SearchFilter, StoredHit, VectorStore

__all__ = ["MAX_K", "Retriever", "SearchHit", "SearchQuery"]

MAX_K = 1000


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A buyer's query: words, a decoded photo, or both, plus optional filters."""

    text: str | None = None
    image: Image.Image | None = None
    filter: SearchFilter | None = None

    def validate(self) -> None:
        has_text = self.text is not None and self.text.strip() != ""
        if not has_text and self.image is None:
            raise InvalidQueryError("a query needs text, an image, or both")


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One product in a result list."""

    product_id: str
    title: str
    category: list[str]
    score: float
    image: str | None
    attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_stored(cls, hit: StoredHit) -> SearchHit:
        p: dict[str, Any] = hit.payload
        return cls(
            product_id=hit.product_id,
            title=str(p.get("title", "")),
            category=list(p.get("category", [])),
            score=hit.score,
            image=p.get("image"),
            attributes=dict(p.get("attributes", {})),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "title": self.title,
            "category": self.category,
            "score": round(self.score, 6),
            "image": self.image,
        }


class Retriever:
    """Flat search over the whole catalogue (the baseline every other mode is measured against).

    Text queries search the products' text vectors, photo queries their image
    vectors; a query with both fuses the two rankings in Qdrant (RRF). With an
    ``exact`` index, a photo that is a copy of a catalogue photo returns that product
    first (:meth:`exact_first`), whatever the image tower makes of it.
    """

    def __init__(
        self,
        store: VectorStore,
        text_encoder: TextEncoder,
        image_encoder: ImageEncoder,
        exact: ExactMatchIndex | None = None,
    ) -> None:
        manifest = store.manifest()
        if manifest is None:
            raise IndexNotFoundError("there is no index yet: run `tandem index --catalog DIR` first")
        manifest.check_encoders(text_encoder=text_encoder.model_id, image_encoder=image_encoder.model_id)
        self.store = store
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.manifest: IndexManifest = manifest
        self.exact = exact

    def encode(self, query: SearchQuery) -> dict[str, np.ndarray]:
        """The query's vectors, keyed by the named vector each one searches."""
        query.validate()
        vectors: dict[str, np.ndarray] = {}
        if query.text is not None and query.text.strip():
            vectors[TEXT_VECTOR] = self.text_encoder.encode([query.text.strip()])[0]
        if query.image is not None:
            vectors[IMAGE_VECTOR] = self.image_encoder.encode([query.image])[0]
        return vectors

    def search_vectors(
        self, vectors: dict[str, np.ndarray], *, k: int = 10, filter: SearchFilter | None = None
    ) -> list[SearchHit]:
        if not 1 <= k <= MAX_K:
            raise InvalidQueryError(f"k must be between 1 and {MAX_K}, got {k}")
        if len(vectors) == 1:
            ((using, vec),) = vectors.items()
            hits = self.store.search(vec, using=using, k=k, filter=filter)
        else:
            hits = self.store.search_fused(vectors, k=k, filter=filter)
        return [SearchHit.from_stored(h) for h in hits]

    def exact_first(self, query: SearchQuery, hits: list[SearchHit], k: int) -> list[SearchHit]:
        """``hits`` with the product the query photo is a copy of moved (or put) first, still ``k`` long."""
        if self.exact is None or query.image is None:
            return hits
        found = self.exact.candidates(query.image, query.filter)
        if not found:
            return hits
        # Ties (one picture under two ids, near-identical photos) go to the one the vector search ranks higher.
        rank = {h.product_id: i for i, h in enumerate(hits)}
        ranked = [m for m in found if m.product_id in rank]
        match = min(ranked, key=lambda m: rank[m.product_id]) if ranked else found[0]
        rest = [h for h in hits if h.product_id != match.product_id]
        # Scored at least as high as the best hit, so a later stable sort by score keeps it first.
        top = max((h.score for h in hits), default=1.0)
        first = SearchHit.from_stored(StoredHit(match.product_id, max(top, 1.0), match.payload))
        return [first, *rest][:k]

    def search(self, query: SearchQuery, *, k: int = 10) -> list[SearchHit]:
        return self.exact_first(query, self.search_vectors(self.encode(query), k=k, filter=query.filter), k)
