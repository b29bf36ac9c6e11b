"""The chat use case behind ``POST /v1/chat``: decode the photo, run the turn, shape cards and SSE events.

Example:
    >>> body = ChatRequest(message={"text": "red kurtas"})
    >>> response = await chat.answer(body, request_id="r1", base_url="/", owner="platform")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import asdict, replace
from typing import Any

from PIL import Image

from api.http.chat_schemas import ChatItem, ChatRequest, ChatResponse, DegradedPart
from api.http.image_fetch import ImageFetcher, decode_base64_image
from api.http.recommender import card_image_url
from api.http.schemas import DiversityInfo
from api.settings import Settings
from rag.diversity import DiversityCalibration
from rag.pipeline import Pipeline
from rag.recommend import VectorLookup, measure_list
from rag.turn import (
    BuyerContext,
    CandidatesEvent,
    DoneEvent,
    RankedProduct,
    RankingEvent,
    ReviseEvent,
    Sampling,
    Scored,
    TokenEvent,
    TurnRequest,
    TurnResult,
)
from retrieval.images import ImageLimits, decode_image

__all__ = ["ChatService"]


class ChatService:
    """Answers chat turns through one shared :class:`rag.pipeline.Pipeline`."""

    def __init__(
        self,
        pipeline: Pipeline,
        fetcher: ImageFetcher,
        limits: ImageLimits,
        settings: Settings,
        *,
        vectors: VectorLookup | None = None,
        calibration: DiversityCalibration | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.fetcher = fetcher
        self.limits = limits
        self.image_base_url = settings.api.public_image_base_url
        self.vectors = vectors
        self.calibration = calibration or DiversityCalibration.default()

    async def _image(self, request: ChatRequest) -> Image.Image | None:
        message = request.message
        if message.image_base64:
            return decode_image(
                decode_base64_image(message.image_base64, self.limits), self.limits, name="image_base64"
            )
        if message.image_url:
            data = await self.fetcher.fetch_url(message.image_url)
            return decode_image(data, self.limits, name="the image at image_url")
        return None

    def knobs(self, request: ChatRequest) -> tuple[Sampling, float | None, dict[str, Any]]:
        """The ranker's sampling and MMR's λ for this turn, from the request or its target diversity."""
        sampling = request.sampling
        chosen = (
            Sampling(sampling.temperature, sampling.top_p, sampling.top_k, sampling.seed) if sampling else Sampling()
        )
        lam = request.mmr_lambda
        settings: dict[str, Any] = dict(chosen.payload())
        candidates, explore = request.candidates, request.explore
        if request.diversity is not None:
            pick = self.calibration.settings_for(request.diversity)
            settings = {"diversity": request.diversity, pick["knob"]: pick["value"], "calibrated": pick["calibrated"]}
            if pick["knob"] == "mmr_lambda":
                lam = float(pick["value"])
            else:
                chosen = replace(chosen, **{pick["knob"]: pick["value"]})
            # The calibration holds on pools like the ones it was measured on; the request's own sizes win.
            pool = self.calibration.pool
            if pool is not None and candidates is None and explore is None:
                candidates, explore = pool.candidates, pool.explore
        if lam is not None:
            settings["mmr_lambda"] = lam
        settings["candidates"] = candidates or self.pipeline.config.ranker_candidates
        settings["explore"] = explore or 0
        return chosen, lam, settings

    async def turn(self, request: ChatRequest, *, owner: str | None = None) -> tuple[TurnRequest, dict[str, Any]]:
        """The pipeline's request for this chat request, and the knob settings to report with the answer.

        ``owner`` is the caller's id (an API key's name or short hash, never the key): the session is theirs.
        """
        buyer = request.buyer
        sampling, lam, settings = self.knobs(request)
        turn = TurnRequest(
            text=request.message.text,
            image=await self._image(request),
            session_id=request.session_id,
            buyer=BuyerContext(buyer.id, buyer.profile, tuple(buyer.history)) if buyer else None,
            top_k=request.top_k,
            sampling=sampling,
            candidates=settings["candidates"],
            mmr_lambda=lam,
            explore=settings["explore"],
            owner=owner,
        )
        return turn, settings

    async def diversity(self, result: TurnResult, settings: dict[str, Any]) -> DiversityInfo:
        ids = [i.product.product_id for i in result.items]
        reached = await measure_list(self.vectors, ids, [i.product.category for i in result.items])
        return DiversityInfo(**asdict(reached), settings=settings)

    def card(self, item: RankedProduct | Scored, base_url: str) -> ChatItem:
        p = item.product
        image = str(p.image_path) if p.image_path is not None else None
        return ChatItem(
            product_id=p.product_id,
            name=p.title,
            category=" > ".join(p.category),
            category_path=list(p.category),
            score=round(item.score, 6),
            image_url=card_image_url(image, base_url, self.image_base_url),
            reason=item.reason if isinstance(item, RankedProduct) else None,
        )

    async def response(
        self, result: TurnResult, request_id: str, base_url: str, settings: dict[str, Any]
    ) -> ChatResponse:
        return ChatResponse(
            session_id=result.session_id,
            request_id=request_id,
            query=result.query,
            items=[self.card(i, base_url) for i in result.items],
            explanation=result.explanation,
            degraded=[DegradedPart(part=d.part, reason=d.reason) for d in result.degraded],
            timing_ms=result.timing_ms,
            diversity=await self.diversity(result, settings),
        )

    async def answer(
        self, request: ChatRequest, *, request_id: str, base_url: str, owner: str | None = None
    ) -> ChatResponse:
        turn, settings = await self.turn(request, owner=owner)
        return await self.response(await self.pipeline.answer(turn), request_id, base_url, settings)

    async def events(
        self, turn: TurnRequest, *, request_id: str, base_url: str, settings: dict[str, Any]
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """(event name, data) pairs: candidates, ranking, token… (revise: a shown sentence taken back), done."""
        async for event in self.pipeline.run(turn):
            if isinstance(event, CandidatesEvent):
                yield "candidates", {"session_id": event.session_id, "query": event.query,
                                     "items": _dump(self.card(c, base_url) for c in event.candidates)}  # fmt: skip
            elif isinstance(event, RankingEvent):
                degraded = [{"part": d.part, "reason": d.reason} for d in event.degraded]
                yield "ranking", {"items": _dump(self.card(i, base_url) for i in event.items), "degraded": degraded}
            elif isinstance(event, TokenEvent):
                yield "token", {"text": event.text}
            elif isinstance(event, ReviseEvent):
                yield "revise", {"explanation": event.text}
            elif isinstance(event, DoneEvent):
                done = await self.response(event.result, request_id, base_url, settings)
                yield "done", done.model_dump(mode="json")


def _dump(cards: Any) -> list[dict[str, Any]]:
    return [c.model_dump(mode="json") for c in cards]
