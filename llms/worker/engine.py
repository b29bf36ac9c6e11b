"""The narrow interface every embedded-worker engine implements.

An engine owns its tokenizer and chat template: it takes OpenAI-style messages (with
tool-call ``arguments`` already decoded to dicts, the Hugging Face convention) and
yields text deltas. Tool-call parsing and the OpenAI response shape live above it
(:mod:`llms.worker.service`), so a transformers engine, vLLM's engine and the
simulated engine of the benchmark are interchangeable.

Example:
    >>> params = SamplingParams(temperature=0.0, max_tokens=8)
    >>> GenerationRequest(messages=[{"role": "user", "content": "hi"}], sampling=params).adapter is None
    True
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["Engine", "EngineStats", "FinishReason", "GenerationEvent", "GenerationRequest", "SamplingParams"]

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding knobs. ``temperature == 0`` means greedy; ``top_k == 0`` and ``top_p == 1`` mean off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    """One chat turn to complete: messages, optional tools (OpenAI function schemas) and the adapter to use."""

    messages: list[dict[str, Any]]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    tools: list[dict[str, Any]] | None = None
    adapter: str | None = None  # None: the base model
    # OpenAI's tool_choice: "required" or {"type": "function", "function": {"name": ...}} asks the engine to
    # guarantee one schema-valid tool call (guided decoding, as vLLM does); "auto"/None leave the model free.
    tool_choice: str | dict[str, Any] | None = None
    # OpenAI's response_format: {"type": "json_schema", "json_schema": {"schema": ...}} or {"type": "json_object"}
    # asks for one JSON value that fits (guided decoding, as vLLM does); None or {"type": "text"}: free text.
    response_format: dict[str, Any] | None = None
    # vLLM's continue_final_message: the last message is the assistant's, started by the caller; continue it.
    continue_final_message: bool = False


@dataclass(frozen=True)
class GenerationEvent:
    """A text delta; the last event of a generation carries ``finish_reason`` and the token counts."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    forward_passes: int = 0  # fewer than completion tokens where guided decoding fed forced text in one pass


@dataclass
class EngineStats:
    """Counters an engine keeps for ``/metrics``: how well concurrent requests were batched."""

    requests: int = 0
    batches: int = 0
    batched_rows: int = 0
    max_batch: int = 0
    completion_tokens: int = 0
    forward_passes: int = 0  # fewer than completion tokens where guided decoding fed forced text in one pass
    prompt_tokens: int = 0
    prefix_hits: int = 0  # prompts that started like a cached one (llms.worker.prefix_cache)
    prefix_tokens_reused: int = 0  # prompt tokens not prefilled again thanks to those hits

    @property
    def mean_batch(self) -> float:
        return self.batched_rows / self.batches if self.batches else 0.0


@runtime_checkable
class Engine(Protocol):
    """Generates text for chat requests; safe to call concurrently from one event loop."""

    @property
    def model_name(self) -> str: ...

    @property
    def adapters(self) -> Sequence[str]: ...

    @property
    def stats(self) -> EngineStats: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream the completion; raises :class:`llms.errors.EngineError` on failure."""
        ...

    async def aclose(self) -> None: ...
