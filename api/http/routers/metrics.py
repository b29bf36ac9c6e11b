"""Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.http.metrics import CONTENT_TYPE, ApiMetrics

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    registry: ApiMetrics = request.app.state.metrics
    body = registry.render()
    resources = getattr(request.app.state, "resources", None)
    if resources is not None:
        body += resources.dispatcher.metrics.render()  # the LLM queue, workers and TTFT, beside HTTP
    return Response(body, media_type=CONTENT_TYPE)
