"""The embedded worker's OpenAI chat-completions logic, free of any web framework.

It resolves the model name (the base model or a LoRA adapter), runs the engine, parses
Hermes ``<tool_call>`` blocks into ``tool_calls`` when the request offered tools (as vLLM's
``--enable-auto-tool-choice --tool-call-parser hermes`` does; a block that does not parse
stays text, as it does there), and shapes responses and stream chunks. ``api/worker/app.py``
puts it on HTTP.

Example:
    >>> import asyncio
    >>> from llms.protocol import ChatCompletionRequest
    >>> from llms.worker.simulated import SimulatedEngine
    >>> svc = WorkerService(SimulatedEngine(reply="ok"))
    >>> req = ChatCompletionRequest.model_validate(
    ...     {"model": "tandem-simulated", "messages": [{"role": "user", "content": "hi"}]})
    >>> asyncio.run(svc.complete(req))["choices"][0]["message"]["content"]
    'ok'
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from llms.errors import EngineError, InvalidChatRequestError, ModelNotFoundError
from llms.protocol import ChatCompletionRequest
from llms.tool_calls import HermesStreamSplitter, parse_hermes
from llms.worker.engine import Engine, GenerationEvent, GenerationRequest
from llms.worker.metrics import WorkerMetrics

__all__ = ["WorkerService"]


class WorkerService:
    """Serves one engine (base model + its adapters) under OpenAI model names."""

    def __init__(self, engine: Engine, *, served_name: str | None = None, metrics: WorkerMetrics | None = None) -> None:
        self.engine = engine
        self.base_name = served_name or engine.model_name
        self.metrics = metrics or WorkerMetrics()

    def model_names(self) -> list[str]:
        return [self.base_name, *self.engine.adapters]

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``: the base model, then each adapter with the base as its parent (as vLLM lists them)."""
        created = int(time.time())
        base = self.base_name
        data: list[dict[str, Any]] = [{"id": base, "object": "model", "created": created, "owned_by": "tandem"}]
        data += [
            {"id": name, "object": "model", "created": created, "owned_by": "tandem", "parent": base, "root": base}
            for name in self.engine.adapters
        ]
        return {"object": "list", "data": data}

    def _request(self, req: ChatCompletionRequest) -> GenerationRequest:
        if req.model == self.base_name:
            adapter = None
        elif req.model in self.engine.adapters:
            adapter = req.model
        else:
            raise ModelNotFoundError(
                f"model {req.model!r} is not served here; available: {', '.join(self.model_names())}"
            )
        try:
            messages = req.engine_messages()
        except ValueError as exc:
            raise InvalidChatRequestError(str(exc)) from exc
        if req.tool_choice == "required" and not req.tools:
            raise InvalidChatRequestError("tool_choice 'required' needs tools")
        if req.continue_final_message and (req.add_generation_prompt or req.messages[-1].role != "assistant"):
            raise InvalidChatRequestError(
                "continue_final_message needs add_generation_prompt false and an assistant message last"
            )
        tools = req.tool_dicts()
        return GenerationRequest(messages=messages, sampling=req.sampling(), tools=tools, adapter=adapter,
                                 tool_choice=req.tool_choice if tools else None,
                                 response_format=req.response_format,
                                 continue_final_message=req.continue_final_message)  # fmt: skip

    async def _events(self, gen: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        try:
            async for event in self.engine.generate(gen):
                yield event
        except EngineError:
            raise
        except (RuntimeError, ValueError) as exc:  # torch and tokenizer failures surface as these
            raise EngineError(f"generation failed: {exc}") from exc

    async def complete(self, req: ChatCompletionRequest) -> dict[str, Any]:
        gen = self._request(req)
        t0 = time.monotonic()
        self.metrics.in_flight.inc()
        outcome = "error"
        try:
            parts: list[str] = []
            last = GenerationEvent("")
            first = True
            async for event in self._events(gen):
                if first:
                    self.metrics.ttft.observe(time.monotonic() - t0)
                    first = False
                parts.append(event.text)
                last = event
            text = "".join(parts)
            message: dict[str, Any] = {"role": "assistant", "content": text}
            finish: str = last.finish_reason or "stop"
            if gen.tools:
                parsed = parse_hermes(text)
                if parsed.malformed:
                    self.metrics.malformed_tool_calls.inc()
                elif parsed.tool_calls:
                    message = {
                        "role": "assistant",
                        "content": parsed.content or None,
                        "tool_calls": [c.to_openai() for c in parsed.tool_calls],
                    }
                    finish = "tool_calls"
            outcome = "ok"
            self.metrics.tokens.inc(last.completion_tokens)
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": _usage(last),
            }
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(req.model, outcome).inc()
            self.metrics.latency.observe(time.monotonic() - t0)

    def validate(self, req: ChatCompletionRequest) -> GenerationRequest:
        """Check a request before a stream starts, so bad input is a 4xx and not a broken stream."""
        return self._request(req)

    async def stream(
        self, req: ChatCompletionRequest, gen: GenerationRequest | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """OpenAI ``chat.completion.chunk`` dicts; the first carries the role and the first token."""
        gen = gen or self._request(req)
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": req.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        splitter = HermesStreamSplitter() if gen.tools else None
        t0 = time.monotonic()
        self.metrics.in_flight.inc()
        outcome = "error"
        try:
            last = GenerationEvent("")
            first = True
            async for event in self._events(gen):
                last = event
                text = splitter.feed(event.text) if splitter is not None else event.text
                if first:
                    self.metrics.ttft.observe(time.monotonic() - t0)
                    first = False
                    yield chunk({"role": "assistant", "content": text})
                elif text:
                    yield chunk({"content": text})
            finish: str = last.finish_reason or "stop"
            if splitter is not None:
                held, call_text = splitter.finish()
                if held:
                    yield chunk({"content": held})
                if call_text:
                    parsed = parse_hermes(call_text)
                    if parsed.malformed or not parsed.tool_calls:
                        self.metrics.malformed_tool_calls.inc()
                        yield chunk({"content": call_text})  # as vLLM does: unparsable calls stay text
                    else:
                        calls = [c.to_openai(index=i) for i, c in enumerate(parsed.tool_calls)]
                        yield chunk({"tool_calls": calls})
                        finish = "tool_calls"
            yield chunk({}, finish)
            if req.stream_options is not None and req.stream_options.include_usage:
                yield {**chunk({}), "choices": [], "usage": _usage(last)}
            outcome = "ok"
            self.metrics.tokens.inc(last.completion_tokens)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(req.model, outcome).inc()
            self.metrics.latency.observe(time.monotonic() - t0)


def _usage(last: GenerationEvent) -> dict[str, int]:
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.completion_tokens,
        "total_tokens": last.prompt_tokens + last.completion_tokens,
    }
