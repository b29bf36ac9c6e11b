"""An httpx transport that plays scripted OpenAI-compatible workers, for fast dispatcher tests.

Each host gets a :class:`Behaviour`; the transport records what each one saw (requests,
peak concurrency, payloads) so tests can assert on routing without real servers. A
behaviour's ``gate`` holds its answers until the test sets it, so tests decide when
requests finish instead of guessing with delays. Given a fake ``clock``, a worker's
``delay_s`` (non-streamed) advances that clock instead of sleeping, so latencies, and the
balancing that follows them, are the same on every run however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from tests.support.clock import FakeClock

Mode = Literal["ok", "connect_error", "hang", "http_500", "http_400", "malformed", "break_after_first", "tool_call"]


@dataclass
class Behaviour:
    mode: Mode = "ok"
    delay_s: float = 0.0
    models: tuple[str, ...] = ("m",)
    healthy: bool = True
    gate: asyncio.Event | None = None  # when given, every request waits for it before it is answered
    requests: int = 0
    in_flight: int = 0
    peak: int = 0
    payloads: list[dict[str, Any]] = field(default_factory=list)


def _completion(model: str, content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "x",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _chunk(text: str, finish: str | None = None) -> bytes:
    body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text},
                                                            "finish_reason": finish}]}  # fmt: skip
    return f"data: {json.dumps(body)}\n\n".encode()


class _Stream(httpx.AsyncByteStream):
    def __init__(self, behaviour: Behaviour, host: str, done: asyncio.Event) -> None:
        self.b, self.host, self.done = behaviour, host, done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            yield _chunk(f"{self.host}:first ")
            if self.b.mode == "break_after_first":
                await asyncio.sleep(self.b.delay_s)
                raise httpx.ReadError("connection reset by peer")
            await asyncio.sleep(self.b.delay_s)
            yield _chunk("second", "stop")
            yield b"data: [DONE]\n\n"
        finally:
            self.done.set()

    async def aclose(self) -> None:
        self.done.set()


class ScriptedTransport(httpx.AsyncBaseTransport):
    """Routes by host (``http://<host>/v1``) to a :class:`Behaviour`."""

    def __init__(self, behaviours: dict[str, Behaviour], clock: FakeClock | None = None) -> None:
        self.behaviours = behaviours
        self.clock = clock

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        b = self.behaviours[host]
        path = request.url.path
        if path == "/health":
            if not b.healthy or b.mode == "connect_error":
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(200, json={"status": "ok"})
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": m} for m in b.models]})
        if b.mode == "connect_error" or not b.healthy:
            raise httpx.ConnectError("connection refused", request=request)
        payload = json.loads(request.content)
        b.payloads.append(payload)
        b.requests += 1
        b.in_flight += 1
        b.peak = max(b.peak, b.in_flight)
        streaming = bool(payload.get("stream"))
        handed_over = False
        done = asyncio.Event()
        try:
            if b.gate is not None:
                await b.gate.wait()
            if b.mode == "hang":
                await asyncio.Event().wait()
            if b.mode == "http_500":
                return httpx.Response(500, json={"error": {"message": "boom"}})
            if b.mode == "http_400":
                return httpx.Response(400, json={"error": {"message": "bad field"}})
            if streaming:
                sse = {"content-type": "text/event-stream"}
                response = httpx.Response(200, stream=_Stream(b, host, done), headers=sse)
                asyncio.get_running_loop().create_task(self._track(b, done))
                handed_over = True
                return response
            if self.clock is None:
                await asyncio.sleep(b.delay_s)
            else:
                self.clock.advance(b.delay_s)
                await asyncio.sleep(0)  # still let others run, so requests overlap as under real load
            if b.mode == "malformed":
                return httpx.Response(200, json=_completion(payload["model"], '<tool_call>{"name": "f", "argu'))
            if b.mode == "tool_call":
                text = '<tool_call>{"name": "submit_ranking", "arguments": {"ids": ["1"]}}</tool_call>'
                return httpx.Response(200, json=_completion(payload["model"], text))
            return httpx.Response(200, json=_completion(payload["model"], f"from {host}"))
        finally:
            if not handed_over:
                b.in_flight -= 1

    @staticmethod
    async def _track(b: Behaviour, done: asyncio.Event) -> None:
        await done.wait()
        b.in_flight -= 1
