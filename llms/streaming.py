"""A streamed try of a chat request on one worker: server-sent events in, ``chat.completion.chunk`` dicts out.

:func:`stream_chat` reads one worker's SSE stream for an :class:`~llms.attempts.Attempt`, with
its own timeouts: the first chunk must come within ``first_token_timeout_s`` and each later
one within ``stream_idle_timeout_s``, so a stalled worker is found long before the request's
deadline. It raises what :func:`~llms.attempts.post_chat` raises; whether a failure may still
be retried (nothing streamed yet) is the dispatcher's call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from llms.attempts import Attempt, AttemptFailedError, classify_status, error_detail
from llms.errors import DeadlineExceededError

__all__ = ["stream_chat"]


async def stream_chat(
    attempt: Attempt,
    body: Mapping[str, Any],
    *,
    first_token_timeout_s: float,
    stream_idle_timeout_s: float,
    on_first_chunk: Callable[[], None],
) -> AsyncIterator[dict[str, Any]]:
    """Stream the worker's chunks; ``on_first_chunk`` runs once, just before the first one is yielded."""
    name = attempt.name
    client = attempt.client
    # Read timeouts are enforced per chunk below; httpx's own stays as a backstop.
    request = client.build_request(
        "POST", attempt.worker.config.chat_url, json=body, headers=attempt.headers, timeout=attempt.timeout
    )
    first = True
    try:
        async with asyncio.timeout(min(attempt.remaining, first_token_timeout_s)):
            response = await client.send(request, stream=True)
    except TimeoutError as exc:
        if attempt.deadline_passed():
            raise DeadlineExceededError(f"{name} did not answer within the deadline") from exc
        raise AttemptFailedError("timeout", f"{name}: no response headers in time") from exc
    except httpx.ConnectError as exc:
        raise AttemptFailedError("connect", f"{name}: cannot connect ({exc})", mark_down=True) from exc
    except httpx.TimeoutException as exc:
        raise AttemptFailedError("timeout", f"{name}: {type(exc).__name__}") from exc
    except httpx.HTTPError as exc:
        raise AttemptFailedError("transport", f"{name}: {type(exc).__name__}: {exc}") from exc
    try:
        if response.status_code != 200:
            raise classify_status(name, response, await response.aread())
        events = EventSource(response).aiter_sse()
        while True:
            limit = first_token_timeout_s if first else stream_idle_timeout_s
            event = await _next_event(attempt, events, min(limit, attempt.deadline - attempt.clock()))
            if event is None or event.data.strip() == "[DONE]":
                return
            try:
                chunk = json.loads(event.data)
            except json.JSONDecodeError as exc:
                raise AttemptFailedError("bad_chunk", f"{name} streamed invalid JSON") from exc
            if isinstance(chunk, dict) and "error" in chunk:
                raise AttemptFailedError("stream_error", f"{name}: {error_detail(event.data.encode())}")
            if first:
                first = False
                on_first_chunk()
            yield chunk
    finally:
        await response.aclose()


async def _next_event(
    attempt: Attempt, events: AsyncIterator[ServerSentEvent], timeout: float
) -> ServerSentEvent | None:
    try:
        # asyncio.timeout, not wait_for: no extra task per chunk (wait_for cost ~70 µs a chunk).
        async with asyncio.timeout(max(0.0, timeout)):
            return await anext(events)
    except StopAsyncIteration:
        return None
    except TimeoutError as exc:
        if attempt.deadline_passed():
            raise DeadlineExceededError(f"{attempt.name} did not finish within the deadline") from exc
        raise AttemptFailedError("stalled", f"{attempt.name} sent nothing for {timeout:.1f}s") from exc
    except httpx.HTTPError as exc:
        raise AttemptFailedError("transport", f"{attempt.name}: {type(exc).__name__}: {exc}") from exc
