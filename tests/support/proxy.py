"""A small reverse proxy for rolling-restart tests: round-robin over upstreams, failing over when one is down.

It does what nginx's ``proxy_next_upstream error`` does for a request no upstream has answered yet: a
refused connection, a reset, or a connection closed before the first response byte (a replica that has
stopped listening, or closed an idle keep-alive connection as it shut down) sends the request to the next
upstream. Once an upstream's status line has arrived the answer is passed through as it is, streamed.

Example:
    >>> with reverse_proxy(["http://127.0.0.1:8001", "http://127.0.0.1:8002"]) as proxy:  # doctest: +SKIP
    ...     httpx.get(proxy.url + "/readyz").status_code
    200
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from eval.process import free_port

__all__ = ["Proxy", "reverse_proxy"]

# Failures before any byte of an answer: the upstream cannot have answered, so another one may.
NOT_ANSWERED = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}


@dataclass
class Proxy:
    """Where the proxy listens, and per upstream how many requests it answered and how many it failed over."""

    url: str
    upstreams: tuple[str, ...]
    answered: Counter[str] = field(default_factory=Counter)
    failed_over: Counter[str] = field(default_factory=Counter)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        with self._lock:
            return Counter(self.answered), Counter(self.failed_over)

    def _order(self) -> list[str]:
        with self._lock:
            start = self._next
            self._next = (self._next + 1) % len(self.upstreams)
        return [self.upstreams[(start + i) % len(self.upstreams)] for i in range(len(self.upstreams))]

    def _count(self, counter: Counter[str], upstream: str) -> None:
        with self._lock:
            counter[upstream] += 1


class _ProxyApp:
    """The ASGI app: one request in, tried on each upstream in turn until one answers."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert scope["type"] == "http" and self.client is not None
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.decode().lower() not in _HOP_BY_HOP]
        target = scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        for upstream in self.proxy._order():
            request = self.client.build_request(scope["method"], upstream + target, headers=headers, content=body)
            try:
                response = await self.client.send(request, stream=True)
            except NOT_ANSWERED:
                self.proxy._count(self.proxy.failed_over, upstream)
                continue
            self.proxy._count(self.proxy.answered, upstream)  # counted before the client can see the answer
            try:
                await self._pass_through(response, send)
            finally:
                await response.aclose()
            return
        await send({"type": "http.response.start", "status": 502, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"no upstream answered"})

    @staticmethod
    async def _pass_through(response: httpx.Response, send: Any) -> None:
        headers = [(k.encode(), v.encode()) for k, v in response.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=5.0))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


@contextmanager
def reverse_proxy(upstreams: Sequence[str], *, guard_s: float = 30.0) -> Iterator[Proxy]:
    """Serve a :class:`Proxy` over ``upstreams`` on a free loopback port, in a thread, until the block ends."""
    port = free_port()
    proxy = Proxy(f"http://127.0.0.1:{port}", tuple(upstreams))
    config = uvicorn.Config(_ProxyApp(proxy), host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="reverse-proxy", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + guard_s  # a hang guard, not a measurement
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the reverse proxy did not start")
            time.sleep(0.02)
        yield proxy
    finally:
        server.should_exit = True
        thread.join(timeout=guard_s)
