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

from finetune.buyers import Buyer
from llms.client import ChatClient
from rag.assembly import CandidateSearch, build_pipeline
from rag.pipeline import Pipeline
from rag.turn import BuyerContext, PipelineConfig, TurnModels, TurnRequest
from retrieval.catalogue import Catalogue
from retrieval.hierarchical import HierarchicalRetriever
from retrieval.images import ImageLimits, read_image_file

__all__ = ["buyer_turn", "offline_pipeline"]


def offline_pipeline(
    retriever: HierarchicalRetriever,
    catalogue: Catalogue,
    llm: ChatClient,
    config: PipelineConfig | None = None,
    *,
    models: TurnModels | None = None,
) -> Pipeline:
    """The chat pipeline over ``retriever`` (called in a thread) and ``llm``, assembled as the service assembles it."""
    return build_pipeline(catalogue, CandidateSearch.threaded(retriever), llm, config, models=models)


def buyer_turn(buyer: Buyer, catalogue: Catalogue, *, with_history: bool = True, top_k: int = 10) -> TurnRequest:
    """A SYNTHETIC buyer's request as a chat turn: words, the photo it sent, profile and (optionally) orders."""
    image = None
    if buyer.query_image is not None:
        photo = catalogue.get(buyer.query_image)
        if photo is not None and photo.image_path is not None:
            image = read_image_file(photo.image_path, ImageLimits())
    context = BuyerContext(buyer.buyer_id, buyer.profile.describe(), buyer.history if with_history else ())
    return TurnRequest(text=buyer.query_text, image=image, buyer=context, top_k=top_k)
