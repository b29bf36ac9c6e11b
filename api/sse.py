"""The one server-sent-events encoder, shared by the chat stream, the LLM gateway and the worker.

Example:
    >>> sse_event({"a": 1}, event="card")
    'event: card\\ndata: {"a": 1}\\n\\n'
    >>> SSE_DONE
    'data: [DONE]\\n\\n'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["SSE_DONE", "sse_event"]

# OpenAI-compatible streams end with this sentinel; clients (openai, litellm) stop reading on it.
SSE_DONE = "data: [DONE]\n\n"


def sse_event(data: dict[str, Any] | Sequence[Any], event: str | None = None) -> str:
    """One SSE frame: an optional ``event:`` line, the JSON ``data:`` line, and the blank line that ends it."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"
