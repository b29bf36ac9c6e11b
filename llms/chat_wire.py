"""LangChain ↔ the OpenAI chat-completions wire format, as :class:`~llms.chat_model.TandemChatModel` speaks it.

Outbound: LangChain messages to wire messages (:func:`wire_messages`) and LangChain's
``tool_choice`` spellings to OpenAI's (:func:`openai_tool_choice`). Inbound: a dispatcher
:class:`~llms.client.Completion` to an ``AIMessage`` (:func:`ai_message`), and a stream of
``chat.completion.chunk`` dicts to LangChain chunks (:class:`StreamAssembler`), with the same
tool-call checks either way. Nothing here calls the dispatcher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, InvalidToolCall, ToolCall, ToolCallChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call
from langchain_core.outputs import ChatGenerationChunk

from llms.client import Completion
from llms.errors import MalformedToolCallError
from llms.tool_calls import HermesStreamSplitter, normalize_message_tool_calls, parse_hermes

__all__ = ["StreamAssembler", "ai_message", "openai_tool_choice", "wire_messages"]

# Blocks LangChain may keep in AIMessage.content (output_version="v1") that the chat wire format
# carries elsewhere (tool calls) or not at all (reasoning); servers refuse unknown content parts.
_NON_WIRE_BLOCKS = frozenset({"tool_call", "tool_call_chunk", "invalid_tool_call", "reasoning"})


def openai_tool_choice(
    choice: str | bool | dict[str, Any] | None, tools: list[dict[str, Any]]
) -> str | dict[str, Any] | None:
    """OpenAI's ``tool_choice`` for LangChain's (``"any"``, ``True``, a bound tool's name…); ``None``: leave it out."""
    names = [t["function"]["name"] for t in tools]
    if choice is None or choice is False:
        return None
    if choice is True:
        if len(names) != 1:
            raise ValueError(f"tool_choice=True forces the only tool, but {len(names)} tools are bound")
        return "required"
    if isinstance(choice, dict):
        return choice
    if choice == "any":
        return "required"
    if choice in {"auto", "none", "required"}:
        return choice
    if choice in names:
        return {"type": "function", "function": {"name": choice}}
    raise ValueError(f"tool_choice {choice!r} is neither auto/none/required/any nor a bound tool ({', '.join(names)})")


def wire_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages in the OpenAI chat wire format."""
    wire = convert_to_openai_messages(messages, text_format="string")
    for message in wire:
        content = message.get("content")
        if isinstance(content, list):
            parts = [p for p in content if not (isinstance(p, dict) and p.get("type") in _NON_WIRE_BLOCKS)]
            if all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
                message["content"] = "".join(str(p.get("text", "")) for p in parts)
            else:
                message["content"] = parts
    return wire


def _usage(usage: Any) -> UsageMetadata | None:
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return UsageMetadata(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=int(usage.get("total_tokens") or prompt + completion),
    )


def ai_message(done: Completion, model: str) -> AIMessage:
    """The ``AIMessage`` of a non-streamed completion; tool calls that do not parse become invalid ones."""
    body = done.body
    message = done.message
    tool_calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in message.get("tool_calls") or []:
        try:
            parsed = parse_tool_call(raw, return_id=True)
        except OutputParserException as exc:
            invalid.append(make_invalid_tool_call(raw, str(exc)))
            continue
        if parsed is not None:
            tool_calls.append(cast(ToolCall, parsed))
    content = message.get("content")
    usage = _usage(body.get("usage"))
    return AIMessage(
        content=content if isinstance(content, str) else "",
        tool_calls=tool_calls,
        invalid_tool_calls=invalid,
        id=body.get("id") if isinstance(body.get("id"), str) else None,
        usage_metadata=usage,
        response_metadata={
            "model_name": body.get("model") or model,
            "finish_reason": body["choices"][0].get("finish_reason"),
            "worker": done.worker,
            "attempts": done.attempts,
            "queue_wait_s": done.queue_wait_s,
            "latency_s": done.latency_s,
        },
    )


class StreamAssembler:
    """OpenAI ``chat.completion.chunk`` dicts → LangChain chunks, with the checks ``complete()`` makes.

    ``Dispatcher.complete`` turns ``<tool_call>`` text (a server without a tool parser) into
    tool calls and refuses malformed or unknown ones; ``Dispatcher.stream`` passes chunks on
    as they come. So the stream holds back everything from ``<tool_call>`` on and checks the
    calls at the end, and streaming and non-streaming calls agree on what a reply means.
    """

    def __init__(self, model: str, tool_names: set[str]) -> None:
        self._model = model
        self._tool_names = tool_names
        self._splitter = HermesStreamSplitter()
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish_reason: str | None = None
        self._usage: Any = None

    def feed(self, raw: Mapping[str, Any]) -> ChatGenerationChunk | None:
        if isinstance(raw.get("model"), str) and raw["model"]:
            self._model = raw["model"]
        if raw.get("usage"):
            self._usage = raw["usage"]
        choices = raw.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        content = delta.get("content")
        text = self._splitter.feed(content) if isinstance(content, str) and content else ""
        calls = [self._remember(position, call) for position, call in enumerate(delta.get("tool_calls") or [])]
        if not text and not calls:
            return None
        return ChatGenerationChunk(message=AIMessageChunk(content=text, tool_call_chunks=calls))

    def _remember(self, position: int, call: Mapping[str, Any]) -> ToolCallChunk:
        function = call.get("function") or {}
        index = call.get("index")
        index = position if not isinstance(index, int) else index
        seen = self._calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
        seen["id"] = seen["id"] or call.get("id")
        seen["name"] += function.get("name") or ""
        seen["arguments"] += function.get("arguments") or ""
        return tool_call_chunk(
            name=function.get("name"), args=function.get("arguments"), id=call.get("id"), index=index
        )

    def finish(self) -> list[ChatGenerationChunk]:
        held, call_text = self._splitter.finish()
        text_calls: list[ToolCallChunk] = []
        if call_text:
            parsed = parse_hermes(call_text)
            if parsed.malformed:
                raise MalformedToolCallError(
                    f"model streamed {len(parsed.malformed)} malformed <tool_call> block(s)", raw=parsed.malformed[0]
                )
            first = max(self._calls, default=-1) + 1
            text_calls = [self._remember(0, c.to_openai(index=first + i)) for i, c in enumerate(parsed.tool_calls)]
        if self._calls:
            calls = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"] or "{}"},
                }
                for _, c in sorted(self._calls.items())
            ]
            normalize_message_tool_calls({"content": None, "tool_calls": calls}, self._tool_names)
        out: list[ChatGenerationChunk] = []
        if held or text_calls:
            out.append(ChatGenerationChunk(message=AIMessageChunk(content=held, tool_call_chunks=text_calls)))
        usage = _usage(self._usage)
        last = AIMessageChunk(
            content="",
            chunk_position="last",
            response_metadata={
                "model_name": self._model,
                "finish_reason": "tool_calls" if text_calls else self._finish_reason,
            },
            usage_metadata=usage,
        )
        out.append(ChatGenerationChunk(message=last))
        return out
