"""How a chat pipeline is put together over a catalogue: its candidate search, product look-up and term tables.

The HTTP service and eval build the same pipeline; they differ only in how retrieval is
reached (the service's micro-batcher, or a retriever called in a thread), so that is the one
thing they pass in.

Example:
    >>> search = CandidateSearch.threaded(retriever)  # doctest: +SKIP
    >>> pipeline = build_pipeline(catalogue, search, llm, PipelineConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from PIL import Image

from llms.client import ChatClient
from rag.explanation_check import ExplanationChecker
from rag.pipeline import Pipeline
from rag.session import SessionStore
from rag.terms import TermVocabulary
from rag.turn import PipelineConfig, Scored, TurnModels, Vectors, scored_hits
from retrieval.catalogue import Catalogue, Product
from retrieval.hierarchical import HierarchicalRetriever, SearchResult
from retrieval.search import SearchQuery
from retrieval.store import SearchFilter

__all__ = ["CandidateSearch", "CatalogueLookup", "Retrieve", "build_pipeline"]

# (query, k precise hits, explore nearby categories) → the retrieval result.
Retrieve = Callable[[SearchQuery, int, int], Awaitable[SearchResult]]


class CandidateSearch:
    """The pipeline's :class:`rag.turn.Search` over a retrieval call: a turn's words, photo and filter → candidates.

    Example:
        >>> search = CandidateSearch.threaded(retriever)  # doctest: +SKIP
        >>> [c.product.product_id for c in await search("navy shirt", None, 5, None)]  # doctest: +SKIP
        ['15970', '39386', '21379', '5649', '1855']
    """

    def __init__(self, retrieve: Retrieve) -> None:
        self.retrieve = retrieve

    @classmethod
    def threaded(cls, retriever: HierarchicalRetriever) -> CandidateSearch:
        """Over a retriever called in a worker thread (its encoders block), as eval and experiments run it."""

        async def retrieve(query: SearchQuery, k: int, explore: int) -> SearchResult:
            return await asyncio.to_thread(retriever.search, query, k=k, explore=explore)

        return cls(retrieve)

    async def __call__(
        self,
        text: str | None,
        image: Image.Image | None,
        k: int,
        search_filter: SearchFilter | None,
        /,
        *,
        explore: int = 0,
    ) -> list[Scored]:
        query = SearchQuery(text=text, image=image, filter=search_filter)
        return scored_hits(await self.retrieve(query, k, explore))


class CatalogueLookup:
    """Products by catalogue id (unknown ids left out): the pipeline's :data:`rag.turn.Lookup`."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def __call__(self, ids: Sequence[str]) -> dict[str, Product]:
        found = (self.catalogue.get(i) for i in ids)
        return {p.product_id: p for p in found if p is not None}


def build_pipeline(
    catalogue: Catalogue,
    search: CandidateSearch,
    llm: ChatClient,
    config: PipelineConfig | None = None,
    *,
    models: TurnModels | None = None,
    sessions: SessionStore | None = None,
    vectors: Vectors | None = None,
) -> Pipeline:
    """A pipeline over ``catalogue``: its term vocabulary, claim checker and attribute values are read from it.

    Reading them walks the whole catalogue (about a second for 44k products): call it off the event loop.
    """
    values: dict[str, set[str]] = {}
    for p in catalogue.products:
        for name, value in p.attributes.items():
            values.setdefault(name, set()).add(value)
    return Pipeline(
        search,
        CatalogueLookup(catalogue),
        llm,
        config or PipelineConfig(),
        models=models,
        vocabulary=TermVocabulary.from_products(catalogue.products),
        checker=ExplanationChecker(catalogue.products),
        sessions=sessions,
        attribute_values={k: sorted(v) for k, v in values.items()},
        vectors=vectors,
    )
