"""One try of a chat request on one worker over HTTP, and the translation of what can go wrong with it.

An :class:`Attempt` bundles what a try may use: the dispatcher's HTTP client, the worker and
the time left before the request's deadline. :func:`post_chat` makes a non-streamed try and
:func:`read_reply` checks its answer. Failures are sorted three ways: the worker's fault
(:class:`AttemptFailedError`: another worker may do better, so the dispatcher may retry), the
request's own fault (:class:`~llms.errors.InvalidChatRequestError`, never retried), and the
deadline (:class:`~llms.errors.DeadlineExceededError`). :mod:`llms.streaming` makes the
streamed try with the same pieces.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import httpx

from llms.errors import (
    DeadlineExceededError,
    InvalidChatRequestError,
    MalformedToolCallError,
    NoWorkerError,
    WorkerError,
)
from llms.metrics import DispatcherMetrics
from llms.tool_calls import normalize_message_tool_calls
from llms.workers import WorkerState

__all__ = [
    "Attempt",
    "AttemptFailedError",
    "auth_headers",
    "classify_status",
    "completion_tokens",
    "error_detail",
    "post_chat",
    "read_reply",
    "tool_names",
]

# A timeout set to the time left may fire a hair before the clock reaches the deadline: it still is the deadline's.
_DEADLINE_SLACK_S = 1e-3


class AttemptFailedError(Exception):
    """One attempt failed in a way another worker may not share (retry if time and attempts remain)."""

    def __init__(self, kind: str, message: str, *, mark_down: bool = False, breaker: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.mark_down = mark_down
        self.breaker = breaker


@dataclass(frozen=True)
class Attempt:
    """What one try may use: the client, the worker, and the time left (on the dispatcher's ``clock``)."""

    client: httpx.AsyncClient
    worker: WorkerState
    deadline: float
    remaining: float
    timeout: httpx.Timeout
    clock: Callable[[], float]

    @classmethod
    def begin(
        cls,
        client: httpx.AsyncClient | None,
        worker: WorkerState,
        deadline: float,
        *,
        clock: Callable[[], float],
        connect_timeout_s: float,
    ) -> Self:
        """Budget a try on ``worker``; refused when the dispatcher is closed or no time is left."""
        if client is None:
            raise NoWorkerError("the LLM dispatcher is shutting down")
        remaining = deadline - clock()
        if remaining <= 0:
            raise DeadlineExceededError("deadline passed before the request reached a worker")
        timeout = httpx.Timeout(remaining, connect=min(connect_timeout_s, remaining))
        return cls(client, worker, deadline, remaining, timeout, clock)

    @property
    def name(self) -> str:
        return self.worker.name

    @property
    def headers(self) -> dict[str, str]:
        return auth_headers(self.worker)

    def deadline_passed(self) -> bool:
        return self.clock() >= self.deadline - _DEADLINE_SLACK_S


def auth_headers(worker: WorkerState) -> dict[str, str]:
    """The worker's bearer token, if it has one."""
    key = worker.config.api_key
    return {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}


async def post_chat(attempt: Attempt, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST a non-streamed chat completion; the worker's JSON answer, or the error it amounts to."""
    name = attempt.name
    try:
        # asyncio's timeout as well as httpx's: the deadline holds whatever the transport does.
        async with asyncio.timeout(attempt.remaining):
            response = await attempt.client.post(
                attempt.worker.config.chat_url, json=body, headers=attempt.headers, timeout=attempt.timeout
            )
    except TimeoutError as exc:
        raise DeadlineExceededError(f"{name} did not answer within the deadline") from exc
    except httpx.ConnectError as exc:
        raise AttemptFailedError("connect", f"{name}: cannot connect ({exc})", mark_down=True) from exc
    except httpx.TimeoutException as exc:
        if attempt.deadline_passed():
            raise DeadlineExceededError(f"{name} did not answer within the deadline") from exc
        raise AttemptFailedError("timeout", f"{name}: {type(exc).__name__}") from exc
    except httpx.HTTPError as exc:
        raise AttemptFailedError("transport", f"{name}: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise classify_status(name, response, response.content)
    try:
        data = response.json()
    except ValueError as exc:
        raise AttemptFailedError("bad_json", f"{name} returned invalid JSON") from exc
    if not isinstance(data, dict):
        raise AttemptFailedError("bad_json", f"{name} returned JSON that is not an object")
    return data


def read_reply(data: dict[str, Any], tools: set[str], *, worker: str, metrics: DispatcherMetrics) -> None:
    """Check a completion's message and turn its tool calls (``<tool_call>`` text too) into OpenAI ones, in place."""
    try:
        message = data["choices"][0]["message"]
        text_call = isinstance(message.get("content"), str) and "<tool_call>" in message["content"]
        if (tools or text_call) and normalize_message_tool_calls(message, tools):
            data["choices"][0]["finish_reason"] = "tool_calls"
    except MalformedToolCallError:
        metrics.malformed_tool_calls.labels(worker).inc()
        raise
    except (KeyError, IndexError, TypeError) as exc:
        metrics.errors.labels(worker, "bad_response").inc()
        raise WorkerError(f"{worker} returned a response without choices[0].message") from exc


def classify_status(worker: str, response: httpx.Response, body: bytes) -> AttemptFailedError:
    """Map a worker's error status: the request's own fault is raised, anything else may be retried."""
    status = response.status_code
    detail = error_detail(body) or response.reason_phrase
    if status == 404:
        # The worker does not (or no longer) serve this model: its list is stale, not a fault.
        return AttemptFailedError("model_not_found", f"{worker}: {detail}", breaker=False)
    if status in {400, 413, 422}:
        raise InvalidChatRequestError(f"the worker refused the request: {detail}")
    return AttemptFailedError(f"http_{status}", f"{worker} answered {status}: {detail}")


def completion_tokens(data: Mapping[str, Any]) -> int:
    """The answer's length in tokens as its usage reports it; at least 1, the balancer divides by it."""
    usage = data.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and tokens > 0 else 1


def tool_names(payload: Mapping[str, Any]) -> set[str]:
    """The names of the function tools a request offers."""
    names: set[str] = set()
    tools: Sequence[Any] = payload.get("tools") or ()
    for tool in tools:
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            name = tool["function"].get("name")
            if isinstance(name, str):
                names.add(name)
    return names


def error_detail(body: bytes) -> str:
    """The message of an OpenAI-style ``{"error": {"message": …}}`` body, else the body's start."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        error = data.get("error", data.get("detail"))
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(data)[:200]
