"""The subset of the OpenAI chat-completions request that Tandem's workers accept, validated.

vLLM, ollama and the embedded worker share this shape; ``top_k`` is vLLM's extension
(``-1`` or ``0`` = off). Unknown fields are ignored, as OpenAI-compatible servers do.

Example:
    >>> req = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    >>> req.sampling().max_tokens
    256
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llms.worker.engine import SamplingParams

__all__ = [
    "CalledFunction",
    "ChatCompletionRequest",
    "ChatMessage",
    "ContentPart",
    "StreamOptions",
    "ToolCall",
    "ToolSpec",
]

DEFAULT_MAX_TOKENS = 256
MAX_STOP = 8


class ToolFunction(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class ToolSpec(BaseModel):
    """An OpenAI tool: ``{"type": "function", "function": {...}}``."""

    type: Literal["function"] = "function"
    function: ToolFunction


class ContentPart(BaseModel):
    """A text part of a message's content (Tandem's models read text only).

    Example:
        >>> ContentPart.model_validate({"type": "text", "text": "hi"}).text
        'hi'
    """

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str = ""


class CalledFunction(BaseModel):
    """The function a tool call named, with its arguments.

    Example:
        >>> CalledFunction(name="get_products", arguments='{"ids": ["A"]}').name
        'get_products'
    """

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] | str = Field(
        default="{}", description="The arguments: a JSON object, or its text (as OpenAI sends it)."
    )


class ToolCall(BaseModel):
    """A tool call an assistant message made earlier in the conversation.

    Example:
        >>> ToolCall.model_validate({"id": "c1", "function": {"name": "submit_ranking"}}).type
        'function'
    """

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def text(self) -> str:
        """Content as text (the parts joined)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


def _guard(key: str, value: Any, then: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema of "if ``key`` is ``value`` then ``then``", spelt with anyOf/not (code generators read both)."""
    return {"anyOf": [{"not": {"required": [key], "properties": {key: {"const": value}}}}, then]}


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"model": "tandem-base", "messages": [{"role": "user", "content": "Say hello."}]}],
            # What the worker checks across fields, published: "required" needs tools; a continued message
            # needs add_generation_prompt false (and an assistant message last, which JSON Schema cannot say).
            "allOf": [
                _guard("tool_choice", "required", {"required": ["tools"], "properties": {"tools": {"minItems": 1}}}),
                _guard(
                    "continue_final_message",
                    True,
                    {"required": ["add_generation_prompt"], "properties": {"add_generation_prompt": {"const": False}}},
                ),
            ],
        },
    )

    model: str = Field(min_length=1, description="A model or adapter a worker serves (GET /v1/models).")
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = Field(
        default=None, description='{"type": "json_schema", "json_schema": {"schema": ...}}, json_object or text.'
    )
    continue_final_message: bool = Field(
        default=False,
        description="vLLM's extension: continue the final (assistant) message the caller started, instead of"
        " opening a new one. Needs add_generation_prompt false.",
    )
    add_generation_prompt: bool = Field(default=True, description="vLLM's extension; false with the one above.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=-1, ge=-1)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="One choice per request.")

    def sampling(self) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(0, self.top_k),
            max_tokens=self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS,
            seed=self.seed,
            stop=tuple(s for s in stop if s),
        )

    def engine_messages(self) -> list[dict[str, Any]]:
        """Messages for a chat template: text content, tool-call arguments decoded to dicts (HF convention)."""
        out: list[dict[str, Any]] = []
        for message in self.messages:
            item: dict[str, Any] = {"role": message.role, "content": message.text()}
            if message.tool_calls:
                calls = []
                for call in message.tool_calls:
                    arguments = call.function.arguments
                    if isinstance(arguments, str):
                        try:
                            arguments = json.loads(arguments) if arguments.strip() else {}
                        except json.JSONDecodeError as exc:
                            raise ValueError(f"tool call arguments are not JSON: {exc.msg}") from exc
                    function = {"name": call.function.name, "arguments": arguments}
                    calls.append({"type": "function", "id": call.id, "function": function})
                item["tool_calls"] = calls
            if message.tool_call_id:
                item["tool_call_id"] = message.tool_call_id
            if message.name:
                item["name"] = message.name
            out.append(item)
        return out

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        if not self.tools or self.tool_choice == "none":
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]
