"""The REST recommendation route's adapter: fetch → decode → :class:`rag.recommend.Recommender` → cards.

Example:
    >>> response = await service.recommend(RecommendRequest(text="red kurta"), request_id="r1")  # doctest: +SKIP
    >>> response.items[0].name  # doctest: +SKIP
    'Diva Women Red Kurta'
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from pathlib import PurePath
from urllib.parse import quote

from PIL import Image

from api.http.errors import ValidationFailedError
from api.http.image_fetch import ImageFetcher, decode_base64_image
from api.http.metrics import ApiMetrics
from api.http.schemas import (
    DiversityInfo,
    RecommendedItem,
    RecommendFilters,
    RecommendRequest,
    RecommendResponse,
    StageTimings,
)
from rag.diversity import DiversityCalibration
from rag.recommend import Recommender, VectorLookup
from retrieval.batch_search import BatchQuery
from retrieval.batching import MicroBatcher
from retrieval.hierarchical import SearchMode, SearchResult
from retrieval.images import ImageLimits, decode_image
from retrieval.search import SearchHit, SearchQuery
from retrieval.store import SearchFilter

__all__ = ["RecommendationService", "card_image_url"]

# Decoding a catalogue-sized JPEG takes ~0.1 ms: cheaper inline than a thread hop. Larger
# uploads are decoded in a thread so a 90-megapixel photo never stalls other requests.
_INLINE_DECODE_BYTES = 64 * 1024


def card_image_url(image: str | None, base_url: str, public_base: str | None) -> str | None:
    """A product card's photo URL: the public image base when set, else this service's ``/images``."""
    if not image:
        return None
    base = public_base or f"{base_url.rstrip('/')}/images"
    return f"{base.rstrip('/')}/{quote(PurePath(image).name)}"


class RecommendationService:
    """The REST face of :class:`rag.recommend.Recommender`: request images and filters in, response schema out."""

    def __init__(
        self,
        fetcher: ImageFetcher,
        batcher: MicroBatcher[BatchQuery, SearchResult],
        limits: ImageLimits,
        metrics: ApiMetrics,
        *,
        attribute_fields: list[str],
        image_base_url: str | None,
        vectors: VectorLookup | None = None,
        calibration: DiversityCalibration | None = None,
    ) -> None:
        async def search(query: SearchQuery, k: int, mode: SearchMode) -> SearchResult:
            return await batcher.submit(BatchQuery(query, k=k, mode=mode))

        self.fetcher = fetcher
        self.batcher = batcher
        self.limits = limits
        self.metrics = metrics
        self.attribute_fields = set(attribute_fields)
        self.image_base_url = image_base_url
        self.recommender = Recommender(search, vectors=vectors, calibration=calibration)

    async def _decode(self, data: bytes, name: str) -> Image.Image:
        if len(data) <= _INLINE_DECODE_BYTES:
            return decode_image(data, self.limits, name=name)
        return await asyncio.to_thread(decode_image, data, self.limits, name=name)

    async def load_image(self, request: RecommendRequest, upload: bytes | None) -> Image.Image | None:
        if upload is not None:
            return await self._decode(upload, "the uploaded file")
        if request.image_base64:
            return await self._decode(decode_base64_image(request.image_base64, self.limits), "image_base64")
        if request.image_url:
            return await self._decode(await self.fetcher.fetch_url(request.image_url), "the image at image_url")
        if request.image_path:
            return await self._decode(await self.fetcher.fetch_path(request.image_path), "the image at image_path")
        return None

    def search_filter(self, filters: RecommendFilters | None) -> SearchFilter | None:
        if filters is None or (not filters.category_prefix and not filters.attributes):
            return None
        unknown = sorted(set(filters.attributes) - self.attribute_fields)
        if unknown:
            known = ", ".join(sorted(self.attribute_fields)) or "none"
            raise ValidationFailedError(f"unknown filter attribute {unknown[0]!r}; the catalogue has: {known}")
        return SearchFilter(category_prefix=filters.category_prefix, attributes=filters.attributes)

    def item(self, hit: SearchHit, base_url: str) -> RecommendedItem:
        image_url = card_image_url(hit.image, base_url, self.image_base_url)
        return RecommendedItem(
            product_id=hit.product_id,
            name=hit.title,
            category=" > ".join(hit.category),
            category_path=hit.category,
            score=round(hit.score, 6),
            image_url=image_url,
        )

    async def recommend(
        self, request: RecommendRequest, *, request_id: str, base_url: str, upload: bytes | None = None
    ) -> RecommendResponse:
        t0 = time.perf_counter()
        search_filter = self.search_filter(request.filters)
        image = await self.load_image(request, upload)
        t1 = time.perf_counter()
        text = request.text.strip() if request.text and request.text.strip() else None
        rec = await self.recommender.recommend(
            SearchQuery(text=text, image=image, filter=search_filter),
            top_k=request.top_k,
            mode=request.mode,
            pool=request.pool,
            mmr_lambda=request.mmr_lambda,
            diversity=request.diversity,
        )
        t2 = time.perf_counter()
        search_ms = rec.result.timing_ms.get("search", 0.0)
        timing = StageTimings(
            fetch=round((t1 - t0) * 1000, 3),
            encode=round(max((t2 - t1) * 1000 - search_ms, 0.0), 3),
            search=round(search_ms, 3),
            total=round((t2 - t0) * 1000, 3),
        )
        for stage in ("fetch", "encode", "search", "total"):
            self.metrics.stage.labels(stage).observe(getattr(timing, stage) / 1000)
        return RecommendResponse(
            request_id=request_id,
            mode=rec.result.mode,
            items=[self.item(h, base_url) for h in rec.hits],
            timing_ms=timing,
            searched_fraction=round(rec.result.searched_fraction, 6),
            diversity=DiversityInfo(**asdict(rec.diversity), settings=rec.settings),
        )
