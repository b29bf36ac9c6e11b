"""One ASGI middleware for what every request shares: request id, guards, metrics and the access log.

Pure ASGI rather than ``BaseHTTPMiddleware``: it runs on every request of a service that
answers in milliseconds, and it must bound the body while it streams in.

Guards, in order: loopback-only when no API keys are configured; a per-key rate limit
(429 ``rate_limited`` + ``Retry-After``, before any routing or body reading, so a flooding key
costs little and holds no in-flight slot); bounded in-flight requests (429 + ``Retry-After``);
a body-size cap (413) enforced on the stream, so a chunked upload without ``Content-Length``
is cut off too.

The key ring and the rate limiter are read from ``app.state`` (``keys``, ``rate_limiter``),
the objects the key dependency uses too. The caller's id (never the key) is left in the
request's state as ``caller`` for the dependency, and is written to the access log. A request
refused for its key's rate gets no access line of its own: one ``rate limited`` line per key
every few seconds counts them (a JSON log line costs more than the refusal itself, and a
flood must not fill the disk).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.http.errors import (
    ApiError,
    OverloadedError,
    PayloadTooLargeError,
    RateLimitedError,
    UnauthorizedError,
    error_body,
)
from api.http.keys import KeyRing
from api.http.metrics import ApiMetrics
from api.http.rate_limit import RateLimiter
from api.http.ssrf import is_loopback
from api.logs import request_id_var

__all__ = ["BodyTooLargeError", "ServiceMiddleware"]

log = logging.getLogger("tandem.api.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class BodyTooLargeError(Exception):
    """Raised from the body stream once it passes the cap (the app may wrap it; its cause stays this)."""


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return "/images" if str(scope.get("path", "")).startswith("/images/") else "unmatched"


class ServiceMiddleware:
    """Request ids, loopback/rate/in-flight/body guards, Prometheus metrics and JSON access logs."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ApiMetrics,
        max_in_flight: int,
        max_body_bytes: int,
        limited_prefix: str = "/v1/",
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.max_body_bytes = max_body_bytes
        self.limited_prefix = limited_prefix
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        limited = str(scope.get("path", "")).startswith(self.limited_prefix)
        counted = False
        try:
            client = scope.get("client")
            keys: KeyRing = scope["app"].state.keys
            if not keys.configured and not is_loopback(client[0] if client else None):
                raise UnauthorizedError(
                    "this service has no API keys configured (TANDEM_API__KEYS) and only serves loopback clients"
                )
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise PayloadTooLargeError(f"the request body is over the limit of {self.max_body_bytes} bytes")
            if limited:
                if keys.configured:
                    caller = keys.identify(headers.get(b"x-api-key", b"").decode("latin-1") or None)
                    state["caller"] = caller  # None: missing or wrong; the route's key dependency answers 401
                    if caller is not None:
                        await self._check_rate(scope, caller)
                if self.in_flight >= self.max_in_flight:
                    self.metrics.rejected.labels("overloaded").inc()
                    raise OverloadedError(f"the service is at its limit of {self.max_in_flight} requests in flight")
                self.in_flight += 1
                counted = True
                self.metrics.in_flight.inc()
            await self.app(scope, self._bounded(receive), send_wrapper)
        except BodyTooLargeError:
            if status["sent"]:
                raise
            await self._send_error(
                send_wrapper,
                PayloadTooLargeError(f"the request body is over the limit of {self.max_body_bytes} bytes"),
                request_id,
            )
        except RateLimitedError as exc:
            state["rate_limited"] = True
            await self._send_error(send_wrapper, exc, request_id)
        except ApiError as exc:
            if status["sent"]:
                raise
            await self._send_error(send_wrapper, exc, request_id)
        finally:
            if counted:
                self.in_flight -= 1
                self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = _route_label(scope)
            code = str(status["code"])
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(route, method, code).inc()
            self.metrics.latency.labels(route, method, code).observe(elapsed)
            if state.get("rate_limited"):
                self._log_refusals(scope, state["caller"])
            else:
                self._log_request(scope, route, method, status["code"], elapsed, state.get("caller"))
            request_id_var.reset(token)

    @staticmethod
    def _log_request(scope: Scope, route: str, method: str, status: int, elapsed: float, caller: str | None) -> None:
        log.info(
            "request",
            extra={
                "method": method,
                "path": scope.get("path"),
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "client": (scope.get("client") or ["-"])[0],
                "caller": caller,
            },
        )

    @staticmethod
    def _log_refusals(scope: Scope, caller: str) -> None:
        limiter: RateLimiter | None = getattr(scope["app"].state, "rate_limiter", None)
        refused = limiter.refusals_to_log(caller) if limiter is not None else 0
        if refused:  # the refusals since this caller's last such line
            log.warning("rate limited", extra={"caller": caller, "refused": refused})

    async def _check_rate(self, scope: Scope, caller: str) -> None:
        limiter: RateLimiter | None = getattr(scope["app"].state, "rate_limiter", None)
        if limiter is None:
            return
        wait_s = limiter.check(caller)
        if wait_s > 0:
            self.metrics.rejected.labels("rate_limited").inc()
            error = RateLimitedError(
                f"this API key ({caller}) is over its rate limit of {limiter.rate_per_s:g} requests/s"
                f" (bursts of {limiter.burst}); retry in {wait_s:.2f} s",
                retry_after_s=wait_s,
            )
            await limiter.hold(caller, float(error.headers["Retry-After"]))
            raise error

    def _bounded(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body_bytes

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError
            return message

        return wrapped

    @staticmethod
    async def _send_error(send: Send, error: ApiError, request_id: str) -> None:
        body = json.dumps(error_body(error, request_id)).encode()
        headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
