"""LLM routes: the worker pool (list, add, remove at run time) and an OpenAI-compatible gateway.

``POST /v1/llm/chat/completions`` takes an OpenAI chat-completions body and sends it through
the same dispatcher as every Tandem LLM call, so other services of the platform get the queue,
the balancing and the failover too. ``X-Tandem-Priority: batch`` marks experiment traffic
(it yields to chat and is refused first); ``X-Tandem-Deadline-S`` bounds the wait.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Response, status
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic.json_schema import SkipJsonSchema

from api.http.deps import ApiKeyDep, DispatcherDep, RequestIdDep
from api.http.errors import ApiError, ModelNotFoundApiError, error_body, to_api_error
from api.http.schemas import SSE_EVENT_SCHEMA, error_responses
from api.sse import SSE_DONE, sse_event
from llms.config import WorkerConfig
from llms.dispatcher import Priority
from llms.errors import LLMError
from llms.protocol import ChatCompletionRequest
from llms.workers import WorkerSnapshot

__all__ = ["router"]

_COMMON = {401: "Missing or invalid X-API-Key", 429: "Overloaded; retry after Retry-After seconds"}
_BODY = {400: "The body is not JSON", 413: "The body is over the size limit", 422: "Request does not match the schema"}
_EVENT_STREAM = {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}

router = APIRouter(prefix="/v1/llm", tags=["llm"], dependencies=[ApiKeyDep])


@router.get("/workers", summary="LLM workers and their state", responses=error_responses(_COMMON))
async def list_workers(dispatcher: DispatcherDep) -> list[WorkerSnapshot]:
    return dispatcher.workers()


@router.post("/workers", status_code=status.HTTP_201_CREATED, summary="Add (or replace) an LLM worker",
             responses=error_responses({**_COMMON, **_BODY}))  # fmt: skip
async def add_worker(worker: WorkerConfig, dispatcher: DispatcherDep) -> WorkerSnapshot:
    dispatcher.add_worker(worker)
    return next(w for w in dispatcher.workers() if w.name == worker.name)


@router.delete("/workers/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove an LLM worker",
               responses=error_responses({**_COMMON, 404: "No worker by that name", 422: _BODY[422]}))  # fmt: skip
async def remove_worker(name: str, dispatcher: DispatcherDep) -> Response:
    try:
        dispatcher.remove_worker(name)
    except KeyError:
        raise ModelNotFoundApiError(f"no LLM worker named {name!r}") from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/chat/completions",
    summary="OpenAI-compatible chat completions through Tandem's dispatcher",
    response_model=None,
    responses={
        200: {"description": "A chat.completion, or with stream true its chunks as events", "content": {
            "application/json": {"schema": {"type": "object"}}, **_EVENT_STREAM}},
        **error_responses({**_COMMON, **_BODY, 404: "No worker serves the model", 502: "The LLM worker failed",
                           503: "No healthy worker serves the model now", 504: "Deadline exceeded"}),
    },
)  # fmt: skip
async def chat_completions(
    body: ChatCompletionRequest,
    dispatcher: DispatcherDep,
    request_id: RequestIdDep,
    priority: Annotated[Literal["interactive", "batch"], Header(alias="X-Tandem-Priority")] = "interactive",
    # A header is absent or a number: no null branch in the document (a header cannot carry one). Below 0.1 s no
    # LLM call can finish, so such a deadline is refused (422) rather than answered 504 every time.
    deadline_s: Annotated[float | SkipJsonSchema[None], Header(alias="X-Tandem-Deadline-S", ge=0.1, le=3600)] = None,
) -> JSONResponse | StreamingResponse:
    payload: dict[str, Any] = body.model_dump(exclude_unset=True, exclude_none=True, mode="json")
    prio = Priority.BATCH if priority == "batch" else Priority.INTERACTIVE
    if not body.stream:
        done = await dispatcher.complete(payload, priority=prio, deadline_s=deadline_s)
        return JSONResponse(done.body, headers={"X-Tandem-Worker": done.worker})
    chunks = dispatcher.stream(payload, priority=prio, deadline_s=deadline_s)
    # Wait for the first chunk before answering, so overload, deadline and no-worker errors are
    # real HTTP statuses (429/504/503) rather than an error inside a 200 stream.
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None

    async def events() -> AsyncIterator[str]:
        try:
            if first is not None:
                yield sse_event(first)
                async for chunk in chunks:
                    yield sse_event(chunk)
        except LLMError as exc:
            error: ApiError = to_api_error(exc)
            yield sse_event(error_body(error, request_id))
            return
        finally:
            await chunks.aclose()
        yield SSE_DONE

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
