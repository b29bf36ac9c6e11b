"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.http.deps import ResourcesDep
from api.http.schemas import HealthResponse, ReadinessResponse

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse, summary="The process is alive")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadinessResponse,
    summary="Retrieval is ready (the LLM part is reported beside it)",
    responses={503: {"model": ReadinessResponse, "description": "Not ready (reason in detail.reason)"}},
)
async def readyz(resources: ResourcesDep) -> JSONResponse:
    parts = resources.parts()
    sessions = await resources.sessions_up()
    if sessions is not None:  # a shared (Redis) store is reported beside the rest; in-process needs no probe
        parts["sessions"] = sessions
    if resources.ready and not resources.draining:
        return JSONResponse(ReadinessResponse(ready=True, parts=parts, detail=resources.info).model_dump())
    reason = "shutting down" if resources.draining else resources.not_ready or "starting"
    body = ReadinessResponse(ready=False, parts=parts, detail={"reason": reason})
    return JSONResponse(body.model_dump(), status_code=503)
