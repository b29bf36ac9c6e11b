"""The Tandem HTTP service: app factory, lifespan, routers and the one error mapping.

Example:
    >>> app = create_app()  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.http.errors import (
    ApiError,
    PayloadTooLargeError,
    ValidationFailedError,
    error_body,
    to_api_error,
)
from api.http.keys import KeyRing
from api.http.metrics import ApiMetrics
from api.http.middleware import BodyTooLargeError, ServiceMiddleware
from api.http.rate_limit import RateLimiter
from api.http.resources import Resources
from api.http.routers import chat, health, llm, metrics, recommendations
from api.http.ssrf import Resolver, system_resolver
from api.settings import Settings, get_settings
from llms.errors import LLMError
from rag.errors import RagError
from retrieval.errors import RetrievalError

__all__ = ["create_app"]

WEB_CHAT = Path(__file__).with_name("static") / "index.html"

# The web chat's page runs only its own script and styles (``static/chat.js``, ``chat.css``): a product
# title or an explanation holding markup cannot run even if some code one day renders it as HTML.
# Card photos come from this service, a data: URL (the buyer's own) or an https image base.
WEB_CHAT_CSP = (
    "default-src 'self'; img-src 'self' data: https:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

log = logging.getLogger("tandem.api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 406: "not_acceptable"}


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
        else:
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request does not match the schema"


def _web_chat_csp(image_base_url: str | None) -> str:
    """The page's CSP; a plain-http image base (a LAN CDN, say) is allowed by its origin."""
    parts = urlsplit(image_base_url or "")
    if parts.scheme != "http" or not parts.netloc:
        return WEB_CHAT_CSP
    return WEB_CHAT_CSP.replace("img-src 'self' data: https:", f"img-src 'self' data: https: http://{parts.netloc}")


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _respond(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(error, _request_id(request)), status_code=error.status, headers=error.headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        error = to_api_error(exc)
        if error.status >= 500:
            log.warning("%s: %s", error.code, error.message, exc_info=error.code == "internal_error")
        return _respond(request, error)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _respond(request, ValidationFailedError(_describe_validation(exc)))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, BodyTooLargeError):
            return _respond(request, PayloadTooLargeError("the request body is over the size limit"))
        code = _HTTP_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
        body = {"error": {"code": code, "message": str(exc.detail), "request_id": _request_id(request)}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RetrievalError, on_api_error)
    app.add_exception_handler(LLMError, on_api_error)
    app.add_exception_handler(RagError, on_api_error)
    app.add_exception_handler(TimeoutError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    # Anything else: a JSON 500 without the exception's text (the log has it, with the request id).
    app.add_exception_handler(Exception, on_api_error)


def create_app(
    settings: Settings | None = None,
    *,
    resolver: Resolver = system_resolver,
    transport: httpx.AsyncBaseTransport | None = None,
    llm_transport: httpx.AsyncBaseTransport | None = None,
    on_ready: Callable[[Resources], None] | None = None,
) -> FastAPI:
    """Build the service. Heavy resources are made in the lifespan, once, and closed on shutdown."""
    settings = settings or get_settings()
    api_metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        resources = await Resources.open(
            settings, api_metrics, resolver=resolver, transport=transport, llm_transport=llm_transport
        )
        app.state.resources = resources
        # Everything loaded so far (torch, models) lives for the process: keep it out of future GC passes,
        # whose full collections otherwise stall every open stream for ~100 ms.
        gc.freeze()
        if on_ready is not None:
            on_ready(resources)
        try:
            yield {}
        finally:
            await resources.aclose()
            app.state.resources = None

    app = FastAPI(
        title="Tandem",
        version="1.0.0",
        summary="Multimodal product recommendations for B2B buyers.",
        description="Send a buyer's photo (URL, shared-storage path, base64 or upload) and/or words; get the"
        " top-K catalogue products. Authenticate with the X-API-Key header. Errors are"
        ' `{"error": {"code", "message", "request_id"}}`.',
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = api_metrics
    app.state.resources = None
    app.state.keys = KeyRing.from_settings(settings.api)  # read by the middleware and the key dependency
    app.state.rate_limiter = RateLimiter.from_settings(settings.api)
    _install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(recommendations.router)
    app.include_router(llm.router)
    app.include_router(chat.router)

    csp = _web_chat_csp(settings.api.public_image_base_url)
    page_headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff"}

    @app.get("/", include_in_schema=False)
    async def web_chat() -> FileResponse:
        """The web chat: one static page over ``POST /v1/chat``."""
        return FileResponse(WEB_CHAT, media_type="text/html", headers=page_headers)

    app.mount("/static", StaticFiles(directory=WEB_CHAT.parent), name="static")

    images_dir = settings.catalogue.path / settings.catalogue.columns.images_dir
    app.mount("/images", StaticFiles(directory=images_dir, check_dir=False, follow_symlink=True), name="images")
    # Base64 inflates by 4/3; leave room for the JSON around it and for multipart framing.
    max_body = settings.images.max_bytes * 4 // 3 + 64 * 1024
    app.add_middleware(
        ServiceMiddleware,
        metrics=api_metrics,
        max_in_flight=settings.api.max_in_flight,
        max_body_bytes=max_body,
    )
    return app
