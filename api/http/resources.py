"""The service's heavy, shared resources: built once in the app's lifespan, closed on shutdown.

Example:
    >>> resources = await Resources.open(get_settings(), ApiMetrics())  # doctest: +SKIP
    >>> resources.ready  # doctest: +SKIP
    True
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import numpy as np
from PIL import Image

from api.chat_service import ChatService
from api.components import build_image_encoder, build_retriever, build_store, build_text_encoder
from api.diversity import DiversityCalibration
from api.image_fetch import ImageFetcher
from api.metrics import ApiMetrics
from api.recommender import RecommendationService
from api.settings import Settings
from api.ssrf import Resolver, system_resolver
from llms.dispatcher import Dispatcher
from rag.explanation_check import ExplanationChecker
from rag.pipeline import Pipeline, PipelineConfig, Scored, scored_hits
from rag.session import SessionStore
from rag.terms import TermVocabulary
from retrieval.batch_search import BatchQuery, search_batch
from retrieval.batching import MicroBatcher
from retrieval.catalogue import Catalogue, Product, load_catalogue
from retrieval.errors import CatalogueError, EncoderMismatchError, IndexNotFoundError
from retrieval.hierarchical import HierarchicalRetriever, SearchResult
from retrieval.search import SearchQuery
from retrieval.store import IMAGE_VECTOR, SearchFilter, VectorStore

__all__ = ["Resources"]

log = logging.getLogger("tandem.api")


def serving_threads(configured: int | None) -> int:
    """torch threads for serving: all cores but one, which is left to the event loop (HTTP, decoding)."""
    if configured is not None:
        return configured
    return max(1, (os.cpu_count() or 2) - 1)


def _pin_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _vectors(store: VectorStore, ids: Sequence[str], using: str) -> dict[str, np.ndarray]:
    return store.vectors(ids, using=using)


@dataclass
class Resources:
    """Everything a request needs; ``not_ready`` says why recommendations cannot be served yet."""

    settings: Settings
    metrics: ApiMetrics
    fetcher: ImageFetcher
    dispatcher: Dispatcher
    store: VectorStore | None = None
    retriever: HierarchicalRetriever | None = None
    batcher: MicroBatcher[BatchQuery, SearchResult] | None = None
    service: RecommendationService | None = None
    catalogue: Catalogue | None = None
    chat: ChatService | None = None
    chat_not_ready: str | None = None
    not_ready: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.service is not None and self.not_ready is None

    def parts(self) -> dict[str, bool]:
        """Which parts serve now: retrieval (gates readiness) and the LLMs (both roles' models on a healthy worker)."""
        llm = self.settings.llm
        return {
            "retrieval": self.ready,
            "llm": all(self.dispatcher.serves(m) for m in (llm.ranker_model, llm.explainer_model)),
        }

    @classmethod
    async def open(
        cls,
        settings: Settings,
        metrics: ApiMetrics,
        *,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
        llm_transport: httpx.AsyncBaseTransport | None = None,
    ) -> Resources:
        threads = serving_threads(settings.api.torch_threads)
        _pin_torch_threads(threads)
        images_root = settings.catalogue.path / settings.catalogue.columns.images_dir
        fetcher = ImageFetcher(
            settings.storage,
            settings.images,
            default_root=images_root,
            resolver=resolver,
            transport=transport,
            on_breaker_state=metrics.set_breaker,
        )
        await fetcher.start()
        # Every LLM call of this process goes through this one dispatcher (queue, balancing, failover).
        dispatcher = Dispatcher(settings.llm.dispatcher, settings.llm.workers, transport=llm_transport)
        await dispatcher.start()
        res = cls(settings, metrics, fetcher, dispatcher)
        try:
            res.store = build_store(settings)
            text_encoder = build_text_encoder(settings)
            image_encoder = build_image_encoder(settings)
            res.retriever = build_retriever(settings, res.store, text_encoder, image_encoder)
        except (IndexNotFoundError, EncoderMismatchError) as exc:
            res.not_ready = str(exc)
            log.warning("not ready: %s", exc)
            return res
        manifest = res.retriever.retriever.manifest
        # One query through every stage now, so the first buyer does not pay for lazy initialisation.
        warm = SearchQuery(text="warm up", image=Image.new("RGB", (64, 64)))
        search_batch(res.retriever, [BatchQuery(warm, k=1), BatchQuery(warm, k=1, mode="flat")])
        res.batcher = MicroBatcher(
            partial(search_batch, res.retriever),
            max_batch=settings.api.batch_max_size,
            max_wait_ms=settings.api.batch_wait_ms,
            on_batch=metrics.observe_batch,
            name="tandem-encoder",
            thread_init=partial(_pin_torch_threads, threads),
        )
        await res.batcher.start()
        res.service = RecommendationService(
            fetcher,
            res.batcher,
            settings.images,
            metrics,
            attribute_fields=manifest.attribute_fields,
            image_base_url=settings.api.public_image_base_url,
            vectors=partial(_vectors, res.store),
            calibration=DiversityCalibration.load(settings.diversity_calibration_path),
        )
        await res._open_chat()
        res.info = {
            "products": res.store.count(),
            "text_encoder": manifest.text_encoder,
            "image_encoder": manifest.image_encoder,
            "categories": len(res.retriever.categories.keys),
            "store": settings.qdrant.url or "qdrant-edge",
            "torch_threads": threads,
        }
        log.info("ready", extra=res.info)
        return res

    async def _open_chat(self) -> None:
        """The conversation pipeline over the same retrieval and dispatcher; the catalogue is its source of truth."""
        settings = self.settings
        try:
            self.catalogue = await asyncio.to_thread(
                load_catalogue, settings.catalogue.path, settings.catalogue.columns, check_images=False
            )
        except CatalogueError as exc:
            self.chat_not_ready = f"the chat needs the catalogue: {exc}"
            log.warning("chat not ready: %s", exc)
            return
        catalogue = self.catalogue
        batcher = self.batcher
        assert batcher is not None

        async def search(
            text: str | None, image: Image.Image | None, k: int, search_filter: SearchFilter | None, /, *,
            explore: int = 0,
        ) -> list[Scored]:  # fmt: skip
            query = SearchQuery(text=text, image=image, filter=search_filter)
            result = await batcher.submit(BatchQuery(query, k=k, explore=explore))
            return scored_hits(result)

        def lookup(ids: Sequence[str]) -> dict[str, Product]:
            found = (catalogue.get(i) for i in ids)
            return {p.product_id: p for p in found if p is not None}

        chat = settings.chat
        config = PipelineConfig(
            ranker_model=settings.llm.ranker_model,
            explainer_model=settings.llm.explainer_model,
            pool=chat.pool,
            ranker_candidates=chat.ranker_candidates,
            max_tool_rounds=chat.max_tool_rounds,
            ranker_deadline_s=chat.ranker_deadline_s,
            ranker_fusion=chat.ranker_fusion,
            explainer_deadline_s=chat.explainer_deadline_s,
            explainer_max_tokens=chat.explainer_max_tokens,
        )
        vocabulary, checker = await asyncio.to_thread(
            lambda: (TermVocabulary.from_products(catalogue.products), ExplanationChecker(catalogue.products))
        )
        sessions = SessionStore(max_sessions=chat.max_sessions, ttl_s=chat.session_ttl_s, max_turns=chat.max_turns)
        values: dict[str, set[str]] = {}
        for p in catalogue.products:
            for name, value in p.attributes.items():
                values.setdefault(name, set()).add(value)
        store = self.store
        assert store is not None

        async def image_vectors(ids: Sequence[str]) -> dict[str, np.ndarray]:
            return await asyncio.to_thread(store.vectors, ids, using=IMAGE_VECTOR)

        pipeline = Pipeline(search, lookup, self.dispatcher, config, vocabulary=vocabulary, checker=checker,
                            sessions=sessions, attribute_values={k: sorted(v) for k, v in values.items()},
                            vectors=image_vectors)  # fmt: skip
        self.chat = ChatService(pipeline, self.fetcher, settings.images, settings, vectors=partial(_vectors, store),
                                calibration=DiversityCalibration.load(settings.diversity_calibration_path))  # fmt: skip

    async def aclose(self) -> None:
        await self.dispatcher.aclose()
        if self.batcher is not None:
            await self.batcher.close()
        await self.fetcher.aclose()
        if self.store is not None:
            self.store.close()
