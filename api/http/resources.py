"""The service's heavy, shared resources: built once in the app's lifespan, closed on shutdown.

Example:
    >>> resources = await Resources.open(get_settings(), ApiMetrics())  # doctest: +SKIP
    >>> resources.ready  # doctest: +SKIP
    True
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import numpy as np
from PIL import Image

from api.components import build_image_encoder, build_retriever, build_store, build_text_encoder, derived_indexes
from api.http.chat_service import ChatService
from api.http.image_fetch import ImageFetcher
from api.http.metrics import ApiMetrics
from api.http.recommender import RecommendationService
from api.http.ssrf import Resolver, system_resolver
from api.settings import Settings
from llms.dispatcher import Dispatcher
from rag.assembly import CandidateSearch, build_pipeline
from rag.diversity import DiversityCalibration
from rag.errors import SessionStoreUnavailableError
from rag.session import MemorySessionStore, SessionStore
from rag.turn import TurnModels
from retrieval.batch_search import BatchQuery, search_batch
from retrieval.batching import MicroBatcher, serving_threads
from retrieval.catalogue import Catalogue, load_catalogue
from retrieval.errors import CatalogueError, EncoderMismatchError, IndexNotFoundError, RetrievalError, StoreError
from retrieval.hierarchical import HierarchicalRetriever, SearchResult
from retrieval.search import SearchQuery
from retrieval.store import IMAGE_VECTOR, VectorStore, derived_cache_key

__all__ = ["Resources"]

log = logging.getLogger("tandem.api")


def _pin_torch_threads(n: int) -> None:
    import torch  # noqa: PLC0415 - lazy: torch costs seconds of start-up; only this path needs it

    torch.set_num_threads(n)


def _session_store(settings: Settings) -> SessionStore:
    """In this process by default; in Redis, shared by every replica, when ``TANDEM_SESSIONS__URL`` is set."""
    chat, sessions = settings.chat, settings.sessions
    if sessions.url is None:
        return MemorySessionStore(max_sessions=chat.max_sessions, ttl_s=chat.session_ttl_s, max_turns=chat.max_turns)
    # Lazy: redis-py's asyncio client costs about a second of start-up, paid only by services that use it.
    from rag.session_redis import RedisSessionStore  # noqa: PLC0415 - lazy: ~1 s of imports, only with Redis

    lock_timeout_s = sessions.lock_timeout_s or settings.api.chat_deadline_s + 15.0
    return RedisSessionStore.from_url(
        sessions.url.get_secret_value(), timeout_s=sessions.timeout_s, prefix=sessions.key_prefix,
        ttl_s=chat.session_ttl_s, max_turns=chat.max_turns, lock_timeout_s=lock_timeout_s,
    )  # fmt: skip


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
    sessions: SessionStore = field(default_factory=MemorySessionStore)
    # Set by the server on SIGTERM: /readyz answers 503 so balancers stop sending, while requests in flight finish.
    draining: bool = False
    index_key: str | None = None  # the index's manifest and size that the derived indexes were built from
    _refresh_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.service is not None and self.not_ready is None

    async def sessions_up(self) -> bool | None:
        """Whether the shared session store answers now; None when sessions live in this process (nothing to ask).

        Reported beside readiness, not gating it: every replica shares the one Redis, so gating would take them all
        out of rotation at once, recommendations (which need no session) included.
        """
        if not self.sessions.shared:
            return None
        try:
            await self.sessions.ping()
        except SessionStoreUnavailableError:
            return False
        return True

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
        res = cls(settings, metrics, fetcher, dispatcher, sessions=_session_store(settings))
        try:
            res.store = build_store(settings)
            text_encoder = build_text_encoder(settings)
            image_encoder = build_image_encoder(settings)
            res.retriever = build_retriever(settings, res.store, text_encoder, image_encoder)
        except (IndexNotFoundError, EncoderMismatchError, StoreError) as exc:
            # A Qdrant server that is down or never answers: the API still starts, and /readyz says why.
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
            "sessions": "redis" if res.sessions.shared else "in-process",
            "torch_threads": threads,
        }
        res.index_key = derived_cache_key(res.store)
        if settings.retrieval.refresh_s > 0:
            res._refresh_task = asyncio.create_task(res._refresh_loop(settings.retrieval.refresh_s), name="refresh")
        log.info("ready", extra=res.info)
        return res

    def refresh_retrieval(self) -> bool:
        """Rebuild the level-1 categories and exact-match fingerprints if the index changed; True when it had.

        Products indexed after start-up (by another process into a Qdrant server, or into this
        process's store) are found by flat search at once, but level 1 only keeps categories it
        knows. Blocking (it may scroll the whole index): the service calls it off the event loop.
        Queries keep using the old indexes until the new ones are swapped in whole.
        """
        if self.store is None or self.retriever is None:
            return False
        products = self.store.count()  # read before the key: what /readyz shows is never ahead of what was built
        key = derived_cache_key(self.store)
        if key is None or key == self.index_key:
            return False
        retriever = self.retriever.retriever
        manifest = self.store.manifest()
        if manifest is None:
            raise IndexNotFoundError("the index is gone")
        manifest.check_encoders(text_encoder=retriever.text_encoder.model_id,
                                image_encoder=retriever.image_encoder.model_id)  # fmt: skip
        exact, categories = derived_indexes(self.settings, self.store, retriever.text_encoder)
        # Attribute swaps: a batch in flight finishes on whichever index it read, both of them valid.
        retriever.exact, retriever.manifest = exact, manifest
        self.retriever.categories = categories
        self.index_key = key
        self.info["products"] = products
        self.info["categories"] = len(categories.keys)
        log.info("index changed: level-1 categories and exact-match fingerprints rebuilt",
                 extra={"products": self.info["products"], "categories": self.info["categories"]})  # fmt: skip
        return True

    async def _refresh_loop(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await asyncio.to_thread(self.refresh_retrieval)
            except EncoderMismatchError as exc:
                # Re-indexed with other encoders: this process's query vectors are in the wrong space now.
                if self.not_ready is None:
                    log.error("index re-built with other encoders; not ready until restarted: %s", exc)
                self.not_ready = str(exc)
            except RetrievalError as exc:
                log.warning("index refresh failed (retrying in %g s): %s", every_s, exc)
            except Exception:  # a bug must not end the loop silently: said once a period, with its traceback
                log.exception("index refresh failed (retrying in %g s)", every_s)

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

        async def retrieve(query: SearchQuery, k: int, explore: int) -> SearchResult:
            return await batcher.submit(BatchQuery(query, k=k, explore=explore))

        chat = settings.chat
        models = TurnModels(ranker=settings.llm.ranker_model, explainer=settings.llm.explainer_model)
        store = self.store
        assert store is not None

        async def image_vectors(ids: Sequence[str]) -> dict[str, np.ndarray]:
            return await asyncio.to_thread(store.vectors, ids, using=IMAGE_VECTOR)

        pipeline = await asyncio.to_thread(
            build_pipeline, catalogue, CandidateSearch(retrieve), self.dispatcher, chat,
            models=models, sessions=self.sessions, vectors=image_vectors,
        )  # fmt: skip
        self.chat = ChatService(pipeline, self.fetcher, settings.images, settings, vectors=partial(_vectors, store),
                                calibration=DiversityCalibration.load(settings.diversity_calibration_path))  # fmt: skip

    async def aclose(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        await self.sessions.aclose()
        await self.dispatcher.aclose()
        if self.batcher is not None:
            await self.batcher.close()
        await self.fetcher.aclose()
        if self.store is not None:
            self.store.close()
