"""``POST /v1/chat``: one turn of a recommendation conversation, whole or as Server-Sent Events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from api.http.chat_schemas import ChatRequest, ChatResponse
from api.http.chat_service import ChatService
from api.http.deps import ApiKeyDep, CallerDep, RequestIdDep, ResourcesDep
from api.http.errors import ApiError, DeadlineExceededError, NotReadyError, error_body, to_api_error
from api.http.schemas import SSE_EVENT_SCHEMA, ErrorResponse
from api.sse import sse_event

__all__ = ["router"]

log = logging.getLogger("tandem.chat")
router = APIRouter(prefix="/v1/chat", tags=["chat"], dependencies=[ApiKeyDep])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad input: invalid image, refused URL"},
    401: {"model": ErrorResponse, "description": "Missing or invalid X-API-Key"},
    404: {"model": ErrorResponse, "description": "Unknown or expired session_id"},
    413: {"model": ErrorResponse, "description": "Image or body over the byte or pixel limit"},
    415: {"model": ErrorResponse, "description": "Not an image"},
    422: {"model": ErrorResponse, "description": "Request does not match the schema"},
    429: {"model": ErrorResponse, "description": "Overloaded; retry after Retry-After seconds"},
    502: {"model": ErrorResponse, "description": "The image storage failed"},
    503: {"model": ErrorResponse, "description": "Not ready (no index, or the chat pipeline is not built)"},
    504: {"model": ErrorResponse, "description": "Deadline exceeded"},
}
_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'The whole turn, or with "stream": true its Server-Sent Events: candidates, ranking, token'
        " (explanation text to append), revise (the explanation as it now stands: a sentence shown as it was written"
        " failed its check at its end and was replaced by the catalogue record's), done (the whole turn)",
        "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
    }
}


async def get_chat(resources: ResourcesDep) -> ChatService:
    if resources.chat is None or resources.not_ready is not None:
        raise NotReadyError(resources.not_ready or resources.chat_not_ready or "the chat pipeline is not ready")
    return resources.chat


ChatDep = Annotated[ChatService, Depends(get_chat)]


@router.post("", response_model=ChatResponse, responses={**_STREAM, **_ERRORS}, summary="One conversation turn")
async def chat(body: ChatRequest, request: Request, chat: ChatDep, request_id: RequestIdDep, caller: CallerDep) -> Any:
    """Products for the buyer's message, ranked by the domain LLM, with the base LLM's explanation.

    With ``"stream": true`` the answer is Server-Sent Events: ``candidates`` (retrieval's cards),
    ``ranking`` (the final cards, as soon as the ranking is known), ``token`` (explanation text,
    as written), ``done`` (the whole non-streamed body) or ``error`` (the API's error body).
    """
    base_url = str(request.base_url)
    deadline = request.app.state.settings.api.chat_deadline_s
    if not body.stream:
        try:
            async with asyncio.timeout(deadline):
                return await chat.answer(body, request_id=request_id, base_url=base_url, owner=caller)
        except TimeoutError as exc:
            raise DeadlineExceededError(f"the turn did not finish within its deadline of {deadline:g} s") from exc
    turn, settings = await chat.turn(body, owner=caller)
    events = chat.events(turn, request_id=request_id, base_url=base_url, settings=settings)
    # The first event comes after retrieval: bad input, an unknown session or a failed retrieval are
    # real HTTP statuses, not an error inside a 200 stream.
    first = await anext(events)

    async def stream() -> AsyncIterator[str]:
        try:
            name, data = first
            yield sse_event(data, event=name)
            async with asyncio.timeout(deadline):
                async for name, data in events:
                    yield sse_event(data, event=name)
        except Exception as exc:  # the stream has started: report in-band, never a broken connection
            error: ApiError = to_api_error(exc)
            if not error.is_client_error:
                log.warning("chat stream failed: %s", type(exc).__name__, extra={"request_id": request_id})
            yield sse_event(error_body(error, request_id), event="error")
        finally:
            await events.aclose()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
