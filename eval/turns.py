"""Chat turns of SYNTHETIC test buyers through Tandem's own pipeline, offline.

The explainer and cold-start evaluations run the use case the service runs
(:class:`rag.pipeline.Pipeline`: terms, hierarchical retrieval, the LoRA ranker, the checked
explanation) over a retriever and an in-process LLM client, so a report measures the product
and not a copy of it.

Example:
    >>> pipeline = offline_pipeline(retriever, catalogue, InProcessClient(service))  # doctest: +SKIP
    >>> result = asyncio.run(pipeline.answer(buyer_turn(buyer, catalogue)))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from PIL import Image

from finetune.buyers import Buyer
from rag.explanation_check import ExplanationChecker
from rag.pipeline import BuyerContext, LlmBackend, Pipeline, PipelineConfig, Scored, TurnRequest, scored_hits
from rag.terms import TermVocabulary
from retrieval.catalogue import Catalogue, Product
from retrieval.hierarchical import HierarchicalRetriever
from retrieval.images import ImageLimits, read_image_file
from retrieval.search import SearchQuery
from retrieval.store import SearchFilter

__all__ = ["buyer_turn", "offline_pipeline"]


def offline_pipeline(
    retriever: HierarchicalRetriever, catalogue: Catalogue, llm: LlmBackend, config: PipelineConfig | None = None
) -> Pipeline:
    """The chat pipeline over ``retriever`` (called in a thread) and ``llm``."""

    async def search(
        text: str | None, image: Image.Image | None, k: int, search_filter: SearchFilter | None, /, *,
        explore: int = 0,
    ) -> list[Scored]:  # fmt: skip
        query = SearchQuery(text=text, image=image, filter=search_filter)
        result = await asyncio.to_thread(retriever.search, query, k=k, explore=explore)
        return scored_hits(result)

    def lookup(ids: Sequence[str]) -> dict[str, Product]:
        found = (catalogue.get(i) for i in ids)
        return {p.product_id: p for p in found if p is not None}

    return Pipeline(search, lookup, llm, config or PipelineConfig(),
                    vocabulary=TermVocabulary.from_products(catalogue.products),
                    checker=ExplanationChecker(catalogue.products))  # fmt: skip


def buyer_turn(buyer: Buyer, catalogue: Catalogue, *, with_history: bool = True, top_k: int = 10) -> TurnRequest:
    """A SYNTHETIC buyer's request as a chat turn: words, the photo it sent, profile and (optionally) orders."""
    image = None
    if buyer.query_image is not None:
        photo = catalogue.get(buyer.query_image)
        if photo is not None and photo.image_path is not None:
            image = read_image_file(photo.image_path, ImageLimits())
    context = BuyerContext(buyer.buyer_id, buyer.profile.describe(), buyer.history if with_history else ())
    return TurnRequest(text=buyer.query_text, image=image, buyer=context, top_k=top_k)
