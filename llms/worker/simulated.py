"""A SIMULATED engine: no model, just a delay model and a fixed text — for load tests and fault drills.

It stands in for a GPU where a benchmark must control service times exactly (heterogeneous,
heavy-tailed workers on a 2-core laptop) and for fault tests (a worker that hangs, one whose
"model" emits malformed tool calls). Everything around it — the HTTP worker, SSE streaming,
tool-call parsing, the dispatcher — is the real code. Its output is labelled simulated.

With a :class:`PrefixCache` it also SIMULATES a prefix (KV) cache, as vLLM's automatic prefix
caching and llama.cpp's slot cache do: prefilling a prompt costs ``prefill_ms`` per uncached
prompt token (a word here), and the longest run of leading messages it served before (in a
token-bounded LRU) is free. Its replies then start with ``[simulated MODEL, prefix cache C/P]``
(C of the P prompt tokens were cached), so a benchmark can read the hit rate from the answers.

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
import hashlib
import json
import random
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from llms.errors import EngineError
from llms.worker.delay import DelayModel
from llms.worker.engine import EngineStats, FinishReason, GenerationEvent, GenerationRequest

__all__ = ["PrefixCache", "SimulatedEngine"]

_TOKENS = re.compile(r"\S+\s*|\s+")


def _words(message: dict[str, Any]) -> int:
    return len(str(message.get("content") or "").split())


@dataclass
class PrefixCache:
    """A SIMULATED per-worker prefix cache: an LRU of message-prefix blocks bounded by ``tokens``.

    Each leading run of messages is one block (keyed by a chained hash, charged its last
    message's words), so a conversation's next turn finds its previous prompt cached. A lookup
    touches the blocks from the longest down, so a prefix always outlives its extensions.

    Example:
        >>> cache = PrefixCache(tokens=100)
        >>> turn1 = [{"role": "user", "content": "red shoes please"}]
        >>> cache.serve(turn1), cache.serve(turn1 + [{"role": "assistant", "content": "ok"}])
        (0, 3)
    """

    tokens: int
    prefill_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0 or self.prefill_ms < 0:
            raise ValueError("prefix cache tokens and prefill_ms must be >= 0")
        self._blocks: OrderedDict[str, int] = OrderedDict()
        self.used = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0

    @classmethod
    def parse(cls, spec: str) -> PrefixCache:
        """``tokens=N[,prefill_ms=F]``, e.g. ``tokens=4000,prefill_ms=0.5``."""
        values: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, raw = item.partition("=")
            if not sep or key not in {"tokens", "prefill_ms"}:
                raise ValueError(f"bad prefix cache parameter {item!r}; expected tokens=N[,prefill_ms=F]")
            try:
                values[key] = float(raw)
            except ValueError as exc:
                raise ValueError(f"prefix cache parameter {key} must be a number, got {raw!r}") from exc
        if "tokens" not in values:
            raise ValueError("a prefix cache needs tokens=N")
        return cls(int(values["tokens"]), values.get("prefill_ms", 0.0))

    def serve(self, messages: Sequence[dict[str, Any]]) -> int:
        """Look ``messages`` up and cache every leading run of them; returns the prompt tokens found cached."""
        keys: list[tuple[str, int, int]] = []  # (block key, its own words, words up to and including it)
        digest = b""
        total = 0
        for message in messages:
            digest = hashlib.blake2b(
                digest + json.dumps(message, sort_keys=True, default=str).encode(), digest_size=16
            ).digest()
            own = _words(message)
            total += own
            keys.append((digest.hex(), own, total))
        cached = next((upto for key, _, upto in reversed(keys) if key in self._blocks), 0)
        for key, own, _ in reversed(keys):  # longest first, so the shortest prefix is the most recently used
            if key in self._blocks:
                self._blocks.move_to_end(key)
            else:
                self._blocks[key] = own
                self.used += own
        while self.used > self.tokens and self._blocks:
            _, own = self._blocks.popitem(last=False)
            self.used -= own
        self.prompt_tokens += total
        self.cached_tokens += cached
        return cached


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
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        self._model_name = model_name
        self._adapters = tuple(adapters)
        self.delay = delay or DelayModel()
        self._slots = asyncio.Semaphore(slots) if slots else None
        self.reply = reply
        self.hang = hang
        self._rng = random.Random(seed)
        self._stats = EngineStats()
        self.prefix_cache = prefix_cache

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def adapters(self) -> Sequence[str]:
        return self._adapters

    @property
    def stats(self) -> EngineStats:
        return self._stats

    def _text(self, request: GenerationRequest, cache_note: str = "") -> list[str]:
        if self.reply is not None:
            return _TOKENS.findall(cache_note + self.reply)
        last = next((m.get("content") or "" for m in reversed(request.messages) if m.get("role") == "user"), "")
        words = str(last).split()[:4] or ["nothing"]
        model = request.adapter or self._model_name
        text = cache_note or f"[simulated {model}] "
        text += f"about {' '.join(words)}: " + " ".join(f"w{i}" for i in range(request.sampling.max_tokens))
        return _TOKENS.findall(text)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if request.adapter is not None and request.adapter not in self._adapters:
            raise EngineError(f"unknown adapter {request.adapter!r}")
        limit = request.sampling.max_tokens
        if self._slots is not None:
            await self._slots.acquire()
        try:
            self._stats.requests += 1
            self._stats.batches += 1
            self._stats.batched_rows += 1
            self._stats.max_batch = max(self._stats.max_batch, 1)
            if self.hang:
                await asyncio.Event().wait()  # never set: the drill for a worker that stops answering
            note, prefill_s = "", 0.0
            if self.prefix_cache is not None:  # looked up once a slot is ours, as a GPU prefills in its batch slot
                prompt = sum(_words(m) for m in request.messages)
                cached = self.prefix_cache.serve(request.messages)
                prefill_s = (prompt - cached) * self.prefix_cache.prefill_ms / 1000
                note = f"[simulated {request.adapter or self._model_name}, prefix cache {cached}/{prompt}] "
            tokens = self._text(request, note)
            finish: FinishReason = "length" if len(tokens) > limit else "stop"
            tokens = tokens[:limit]
            total = self.delay.sample(self._rng)
            await asyncio.sleep(total * self.delay.ttft_fraction + prefill_s)
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
