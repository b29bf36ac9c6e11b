"""A SIMULATED engine: no model, just a delay model and a fixed text — for load tests and fault drills.

It stands in for a GPU where a benchmark must control service times exactly (heterogeneous,
heavy-tailed workers on a 2-core laptop) and for fault tests (a worker that hangs, one whose
"model" emits malformed tool calls). Everything around it — the HTTP worker, SSE streaming,
tool-call parsing, the dispatcher — is the real code. Its output is labelled simulated.

Example:
    >>> import asyncio
    >>> from llms.worker.engine import GenerationRequest, SamplingParams
    >>> eng = SimulatedEngine(reply="hello there")
    >>> async def run():
    ...     req = GenerationRequest([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=8))
    ...     return "".join([e.text async for e in eng.generate(req)])
    >>> asyncio.run(run())
    'hello there'
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Sequence

from llms.errors import EngineError
from llms.worker.delay import DelayModel
from llms.worker.engine import EngineStats, FinishReason, GenerationEvent, GenerationRequest

__all__ = ["SimulatedEngine"]

_TOKENS = re.compile(r"\S+\s*|\s+")


class SimulatedEngine:
    """Emits a fixed or synthetic text, paced by a :class:`DelayModel`, at most ``slots`` requests at once."""

    def __init__(
        self,
        *,
        model_name: str = "tandem-simulated",
        adapters: Sequence[str] = (),
        delay: DelayModel | None = None,
        slots: int | None = None,
        reply: str | None = None,
        hang: bool = False,
        seed: int | None = None,
    ) -> None:
        self._model_name = model_name
        self._adapters = tuple(adapters)
        self.delay = delay or DelayModel()
        self._slots = asyncio.Semaphore(slots) if slots else None
        self.reply = reply
        self.hang = hang
        self._rng = random.Random(seed)
        self._stats = EngineStats()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def adapters(self) -> Sequence[str]:
        return self._adapters

    @property
    def stats(self) -> EngineStats:
        return self._stats

    def _text(self, request: GenerationRequest) -> list[str]:
        if self.reply is not None:
            return _TOKENS.findall(self.reply)
        last = next((m.get("content") or "" for m in reversed(request.messages) if m.get("role") == "user"), "")
        words = str(last).split()[:4] or ["nothing"]
        model = request.adapter or self._model_name
        text = f"[simulated {model}] about {' '.join(words)}: " + " ".join(
            f"w{i}" for i in range(request.sampling.max_tokens)
        )
        return _TOKENS.findall(text)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if request.adapter is not None and request.adapter not in self._adapters:
            raise EngineError(f"unknown adapter {request.adapter!r}")
        tokens = self._text(request)
        limit = request.sampling.max_tokens
        finish: FinishReason = "length" if len(tokens) > limit else "stop"
        tokens = tokens[:limit]
        if self._slots is not None:
            await self._slots.acquire()
        try:
            self._stats.requests += 1
            self._stats.batches += 1
            self._stats.batched_rows += 1
            self._stats.max_batch = max(self._stats.max_batch, 1)
            if self.hang:
                await asyncio.Event().wait()  # never set: the drill for a worker that stops answering
            total = self.delay.sample(self._rng)
            await asyncio.sleep(total * self.delay.ttft_fraction)
            step = total * (1 - self.delay.ttft_fraction) / max(1, len(tokens) - 1)
            for i, token in enumerate(tokens):
                if i:
                    await asyncio.sleep(step)
                last = i == len(tokens) - 1
                self._stats.completion_tokens += 1
                yield GenerationEvent(
                    token,
                    finish_reason=finish if last else None,
                    prompt_tokens=sum(len(str(m.get("content") or "").split()) for m in request.messages),
                    completion_tokens=i + 1,
                )
            if not tokens:
                yield GenerationEvent("", finish_reason="stop")
        finally:
            if self._slots is not None:
                self._slots.release()

    async def aclose(self) -> None:
        return None
