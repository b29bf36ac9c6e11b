"""HTTP face of the embedded worker: ``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/metrics``.

It speaks the OpenAI protocol, errors included (``{"error": {"message", "type", "code"}}``),
so the dispatcher, the openai SDK and LangChain treat it exactly like vLLM or ollama.

Example:
    >>> from llms.worker.simulated import SimulatedEngine
    >>> app = create_worker_app(WorkerService(SimulatedEngine()))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.sse import SSE_DONE, sse_event
from llms.errors import EngineError, InvalidChatRequestError, LLMError, ModelNotFoundError
from llms.protocol import ChatCompletionRequest
from llms.worker.service import WorkerService

__all__ = ["create_worker_app"]

log = logging.getLogger("tandem.worker")


_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "string"}},
        }
    },
}


def _documented(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=``: each status with OpenAI's error body."""
    return {s: {"description": d, "content": {"application/json": {"schema": _OPENAI_ERROR}}}
            for s, d in descriptions.items()}  # fmt: skip


# Each Server-Sent Event (OpenAPI 3.1: the schema of a text/event-stream response describes one event).
_SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
_AUTH = {401: "Missing or invalid bearer token (when the worker has a key)"}
_CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A chat.completion, or with stream true its chunks as Server-Sent Events",
        "content": {"application/json": {"schema": {"type": "object"}},
                    "text/event-stream": {"schema": _SSE_EVENT}},
    },
    **_documented({**_AUTH, 400: "Invalid request (body not JSON, schema, tools)", 404: "Model not served here",
                   422: "Invalid request", 503: "The engine failed"}),
}  # fmt: skip


def _error(status: int, message: str, kind: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def _map(exc: Exception) -> JSONResponse:
    if isinstance(exc, ModelNotFoundError):
        return _error(404, str(exc), "invalid_request_error", "model_not_found")
    if isinstance(exc, InvalidChatRequestError):
        return _error(400, str(exc), "invalid_request_error", "invalid_request")
    if isinstance(exc, EngineError):
        log.warning("engine error: %s", exc)
        return _error(503, str(exc), "server_error", "engine_error")
    log.exception("unexpected worker error", exc_info=exc)
    return _error(503, "internal worker error", "server_error", "internal_error")


def create_worker_app(service: WorkerService, *, api_key: str | None = None) -> FastAPI:
    """Build the worker's app; the engine is closed when the app shuts down."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await service.engine.aclose()

    app = FastAPI(title="Tandem embedded LLM worker", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def check_key(request: Request, call_next: Any) -> Response:
        # /health stays open so orchestrators can probe it without the key.
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not secrets.compare_digest(given.encode(), api_key.encode()):
                return _error(401, "invalid or missing bearer token", "invalid_request_error", "invalid_api_key")
        response: Response = await call_next(request)
        return response

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        message = f"{where}: {first.get('msg', 'invalid request')}"
        return _error(400, message, "invalid_request_error", "invalid_request")

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _error(exc.status_code, str(exc.detail), "invalid_request_error", "http_error")

    async def on_error(_: Request, exc: Exception) -> JSONResponse:
        return _map(exc)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(LLMError, on_error)
    app.add_exception_handler(Exception, on_error)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": service.model_names()}

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"description": "Prometheus metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    )
    async def metrics() -> Response:
        return Response(service.metrics.render(service.engine.stats), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", responses=_documented(_AUTH))
    async def models() -> dict[str, Any]:
        return service.models()

    @app.post("/v1/chat/completions", response_model=None, responses=_CHAT_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest) -> dict[str, Any] | StreamingResponse:
        if not body.stream:
            return await service.complete(body)
        gen = service.validate(body)  # bad input is a 4xx before the stream starts, not a broken stream

        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in service.stream(body, gen):
                    yield sse_event(chunk)
            except LLMError as exc:
                # Headers are gone: the error travels as a data event, as vLLM sends it.
                payload = {"error": {"message": str(exc), "type": "server_error", "code": "engine_error"}}
                yield sse_event(payload)
                return
            yield SSE_DONE

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app
