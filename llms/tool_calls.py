"""Hermes/Qwen ``<tool_call>`` parsing: the format vLLM's ``hermes`` parser and ollama read.

A model trained on Tandem's chat template answers a tool call as::

    <tool_call>
    {"name": "submit_ranking", "arguments": {"ids": ["12", "7"]}}
    </tool_call>

The embedded worker parses this into OpenAI ``tool_calls``; the dispatcher parses it
again when a server returned it as plain text (a server started without a tool parser,
the "LoRA tool calls came back as text" failure) and refuses malformed ones with
:class:`~llms.errors.MalformedToolCallError` instead of passing text off as an answer.

Example:
    >>> parsed = parse_hermes('Sure.<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
    >>> parsed.content, parsed.tool_calls[0].name, parsed.tool_calls[0].arguments
    ('Sure.', 'f', {'x': 1})
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from llms.errors import MalformedToolCallError

__all__ = [
    "TOOL_CALL_END",
    "TOOL_CALL_START",
    "HermesStreamSplitter",
    "ParsedOutput",
    "ToolCall",
    "normalize_message_tool_calls",
    "parse_hermes",
]

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
# The last block may be cut off by max_tokens or a stop string: vLLM's parser accepts it unterminated too.
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)\Z", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: the function name and its decoded JSON arguments."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }
        if index is not None:
            call["index"] = index
        return call


@dataclass(frozen=True)
class ParsedOutput:
    """Model text split into the prose before the first call, the calls, and the blocks that did not parse."""

    content: str
    tool_calls: list[ToolCall]
    malformed: list[str]


def _parse_block(raw: str) -> ToolCall:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MalformedToolCallError(f"tool call is not valid JSON ({exc.msg})", raw=raw) from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise MalformedToolCallError("tool call has no function name", raw=raw)
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):  # some models double-encode the arguments
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise MalformedToolCallError("tool call arguments are not valid JSON", raw=raw) from exc
    if not isinstance(arguments, dict):
        raise MalformedToolCallError("tool call arguments are not a JSON object", raw=raw)
    return ToolCall(name=obj["name"], arguments=arguments)


def parse_hermes(text: str) -> ParsedOutput:
    """Split ``text`` into content and tool calls; never raises (malformed blocks are returned raw)."""
    start = text.find(TOOL_CALL_START)
    if start < 0:
        return ParsedOutput(content=text, tool_calls=[], malformed=[])
    calls: list[ToolCall] = []
    malformed: list[str] = []
    for match in _BLOCK.finditer(text, start):
        raw = (match.group(1) if match.group(1) is not None else match.group(2) or "").strip()
        try:
            calls.append(_parse_block(raw))
        except MalformedToolCallError:
            malformed.append(raw)
    return ParsedOutput(content=text[:start].strip(), tool_calls=calls, malformed=malformed)


def normalize_message_tool_calls(message: dict[str, Any], tool_names: Collection[str]) -> bool:
    """Check (and fix in place) an OpenAI response message's tool calls; returns True when it holds calls.

    ``<tool_call>`` text in ``content`` becomes ``tool_calls``; each call's arguments must be a
    JSON object and its name one of ``tool_names``. Raises :class:`MalformedToolCallError` otherwise.
    """
    content = message.get("content")
    if isinstance(content, str) and TOOL_CALL_START in content:
        parsed = parse_hermes(content)
        if parsed.malformed:
            raise MalformedToolCallError(
                f"model returned {len(parsed.malformed)} malformed <tool_call> block(s)", raw=parsed.malformed[0]
            )
        existing = list(message.get("tool_calls") or [])
        message["tool_calls"] = existing + [c.to_openai() for c in parsed.tool_calls]
        message["content"] = parsed.content or None
    calls = message.get("tool_calls") or []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise MalformedToolCallError("tool call without a function name", raw=json.dumps(call, default=str))
        if tool_names and function["name"] not in tool_names:
            raise MalformedToolCallError(f"model called an unknown tool {function['name']!r}", raw=function["name"])
        arguments = function.get("arguments", "{}")
        try:
            decoded = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError as exc:
            raise MalformedToolCallError(
                f"arguments of {function['name']!r} are not valid JSON", raw=str(arguments)
            ) from exc
        if not isinstance(decoded, dict):
            raise MalformedToolCallError(f"arguments of {function['name']!r} are not a JSON object", raw=str(arguments))
    return bool(calls)


class HermesStreamSplitter:
    """Streams prose as it comes and holds back everything from ``<tool_call>`` on.

    A partial marker at the end of a delta (``"<tool_"``) is held until the next delta
    shows whether it is one, so no marker fragment ever leaks into streamed content.

    Example:
        >>> s = HermesStreamSplitter()
        >>> s.feed("Hello <tool_"), s.feed('call>{"name": "f"}'), s.finish()
        ('Hello ', '', ('', '<tool_call>{"name": "f"}'))
    """

    def __init__(self) -> None:
        self._held = ""
        self._in_call = False

    def feed(self, delta: str) -> str:
        """Return the part of ``delta`` that is safe to stream as content now."""
        if self._in_call:
            self._held += delta
            return ""
        text = self._held + delta
        start = text.find(TOOL_CALL_START)
        if start >= 0:
            self._in_call = True
            self._held = text[start:]
            return text[:start]
        keep = 0
        for size in range(min(len(TOOL_CALL_START) - 1, len(text)), 0, -1):
            if TOOL_CALL_START.startswith(text[-size:]):
                keep = size
                break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> tuple[str, str]:
        """Return ``(content still held, tool-call text)`` at the end of the stream."""
        if self._in_call:
            return "", self._held
        return self._held, ""
