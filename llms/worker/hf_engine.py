"""A transformers + peft engine: one base model, many LoRA adapters, batched decoding on one worker thread.

Requests queue on a thread-safe inbox. The worker thread takes the first one, waits up to
``batch_wait_ms`` for more (up to ``max_batch``), left-pads the prompts, prefills them in one
forward pass and then runs its own KV-cached decode loop for that static batch. Rows of one
batch may use different adapters (peft's mixed-adapter batches, ``adapter_names=[...]``) and
different sampling parameters; each sampled row owns a ``torch.Generator`` seeded from its
request, so a seeded request samples the same tokens whoever its batch-mates are. A request
with ``tool_choice`` "required" or a named function is decoded under its tools' grammar
(:mod:`llms.worker.guided`), as vLLM's guided decoding does. Text deltas cross back to the
caller's event loop with ``call_soon_threadsafe``. Loading lives in :mod:`llms.worker.hf_loading`,
the decode loop in :mod:`llms.worker.hf_decode`; this module holds the engine, its inbox and thread.

Example:
    >>> engine = TransformersEngine.load(Path("var/models/tiny-chat"), {"ranker": Path("var/adapters/ranker")})
    ... # doctest: +SKIP
    >>> request = GenerationRequest([{"role": "user", "content": "hi"}], SamplingParams(temperature=0.0))
    >>> text = "".join([event.text async for event in engine.generate(request)])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from llms.errors import EngineError
from llms.worker.engine import EngineStats, GenerationEvent, GenerationRequest, SamplingParams
from llms.worker.guided import GrammarGuide, GuidedRow
from llms.worker.hf_decode import BatchDecoder, Job, send
from llms.worker.hf_loading import BASE_ADAPTER, cpu_has_fast_bf16, load_checkpoint, reason
from llms.worker.prefix_cache import KVPrefixCache

__all__ = ["DEFAULT_PREFIX_CACHE_TOKENS", "TransformersEngine", "cpu_has_fast_bf16"]

logger = logging.getLogger(__name__)

# Prompt tokens whose KV the engine keeps for reuse (llms.worker.prefix_cache): a few ranker and explainer
# prompts. SmolLM2-135M holds 46 KB per token in float32 (30 layers, 3 KV heads of 64), so about 190 MB.
DEFAULT_PREFIX_CACHE_TOKENS = 4096


def _normalise_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Decode JSON-string tool-call arguments to dicts: OpenAI sends strings, chat templates expect dicts."""
    out: list[dict[str, Any]] = []
    for message in messages:
        msg = dict(message)
        calls = msg.get("tool_calls")
        if calls:
            fixed: list[Any] = []
            for raw in calls:
                if not isinstance(raw, Mapping):
                    fixed.append(raw)
                    continue
                call = dict(raw)
                holder = dict(call["function"]) if isinstance(call.get("function"), Mapping) else call
                args = holder.get("arguments")
                if isinstance(args, str):
                    # Not JSON: the template writes the string verbatim, which is the best we can do.
                    with contextlib.suppress(json.JSONDecodeError):
                        holder["arguments"] = json.loads(args) if args.strip() else {}
                if holder is not call:
                    call["function"] = holder
                fixed.append(call)
            msg["tool_calls"] = fixed
        out.append(msg)
    return out


def _stop_worker(inbox: queue.Queue[Job | None], thread: threading.Thread) -> None:
    inbox.put(None)
    thread.join(timeout=5.0)


def _validate_sampling(params: SamplingParams) -> None:
    if params.max_tokens < 1:
        raise EngineError(f"max_tokens must be at least 1, got {params.max_tokens}")
    if params.temperature < 0:
        raise EngineError(f"temperature must be >= 0, got {params.temperature}")
    if not 0.0 < params.top_p <= 1.0:
        raise EngineError(f"top_p must be in (0, 1], got {params.top_p}")
    if params.top_k < 0:
        raise EngineError(f"top_k must be >= 0, got {params.top_k}")


class TransformersEngine:
    """An :class:`~llms.worker.engine.Engine` running a local transformers checkpoint and its LoRA adapters.

    Example:
        >>> engine = TransformersEngine.load(Path("var/models/tiny-chat"))  # doctest: +SKIP
        >>> engine.model_name, list(engine.adapters)  # doctest: +SKIP
        ('tiny-chat', [])
    """

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        model_name: str,
        adapters: Sequence[str],
        device: torch.device,
        max_batch: int,
        batch_wait_ms: float,
        prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS,
    ) -> None:
        """Wrap an already loaded model; use :meth:`load` instead of calling this directly."""
        self._tokenizer = tokenizer
        self._model_name = model_name
        self._adapters = tuple(adapters)
        self._max_batch = max_batch
        self._batch_wait_s = batch_wait_ms / 1000.0
        self._stats = EngineStats()

        self._config = model.config
        self._context_len = int(getattr(self._config, "max_position_embeddings", 0) or tokenizer.model_max_length)
        self._decoder = BatchDecoder(
            model,
            tokenizer,
            device=device,
            mixed_adapters=bool(self._adapters),
            stats=self._stats,
            is_closed=lambda: self._closed,
            prefix_cache=KVPrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 else None,
        )
        self._guide: GrammarGuide | None = None  # built at the first guided request (xgrammar's tokenizer scan)

        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._worker, name=f"hf-engine-{model_name}", daemon=True)
        self._thread.start()
        # A forgotten aclose() must not leave the thread inside torch while the interpreter tears torch down.
        weakref.finalize(self, _stop_worker, self._inbox, self._thread)

    @classmethod
    def load(
        cls,
        model_dir: Path,
        adapters: Mapping[str, Path] | None = None,
        *,
        device: str = "auto",
        max_batch: int = 8,
        batch_wait_ms: float = 5.0,
        torch_threads: int | None = None,
        dtype: str = "auto",
        prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS,
    ) -> TransformersEngine:
        """Load the tokenizer, the model and every adapter (into one ``PeftModel``) from local directories.

        Raises :class:`EngineError` with a one-line reason when a directory, the chat template or
        an adapter is missing or unreadable.

        Example:
            >>> engine = TransformersEngine.load(Path("var/models/tiny-chat"), device="cpu")  # doctest: +SKIP
        """
        model_dir = Path(model_dir)
        adapters = dict(adapters or {})
        if max_batch < 1:
            raise EngineError(f"max_batch must be at least 1, got {max_batch}")
        model, tokenizer, torch_device = load_checkpoint(
            model_dir, adapters, device=device, torch_threads=torch_threads, dtype=dtype
        )
        return cls(
            model=model,
            tokenizer=tokenizer,
            model_name=model_dir.resolve().name,
            adapters=list(adapters),
            device=torch_device,
            max_batch=max_batch,
            batch_wait_ms=batch_wait_ms,
            prefix_cache_tokens=prefix_cache_tokens,
        )

    @property
    def model_name(self) -> str:
        """The model directory's name."""
        return self._model_name

    @property
    def adapters(self) -> Sequence[str]:
        """The names of the loaded LoRA adapters (``GenerationRequest.adapter`` values)."""
        return self._adapters

    @property
    def stats(self) -> EngineStats:
        """Live batching counters, written by the worker thread."""
        return self._stats

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer (with its chat template)."""
        return self._tokenizer

    def render_prompt(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids: the chat template applied to the messages and tools, with the generation prompt.

        With ``continue_final_message`` the last (assistant) message is left open instead, so the
        model continues a sentence the caller started (vLLM's parameter of the same name).

        Control tokens typed into message text (``<|im_start|>``…) are encoded as plain text, so a
        user cannot forge a system turn.

        Example:
            >>> ids = engine.render_prompt(GenerationRequest([{"role": "user", "content": "hi"}]))  # doctest: +SKIP
        """
        try:
            ids = self._tokenizer.apply_chat_template(
                _normalise_messages(request.messages),
                tools=request.tools,
                add_generation_prompt=not request.continue_final_message,
                continue_final_message=request.continue_final_message,
                tokenize=True,
                return_dict=False,
                sanitize_control_tokens=True,
            )
        except Exception as exc:
            raise EngineError(f"cannot render the chat template: {reason(exc)}") from exc
        return [int(i) for i in ids]

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream the completion of ``request``; bad requests raise :class:`EngineError` at once.

        Example:
            >>> async for event in engine.generate(request):  # doctest: +SKIP
            ...     print(event.text, end="")
        """
        if self._closed:
            raise EngineError("the engine is closed")
        adapter = request.adapter
        if adapter is not None and adapter not in self._adapters:
            known = ", ".join(self._adapters) or "none"
            raise EngineError(f"unknown adapter {adapter!r} (loaded: {known})")
        _validate_sampling(request.sampling)
        prompt_ids = self.render_prompt(request)
        room = self._context_len - len(prompt_ids)
        if room < 1:
            raise EngineError(f"the prompt has {len(prompt_ids)} tokens; the context holds {self._context_len}")
        guided = None
        if request.tools or request.response_format:
            guided = self._grammar_guide().start(request.tools, request.tool_choice, request.response_format)
        return self._stream(
            prompt_ids, adapter or BASE_ADAPTER, request.sampling, min(request.sampling.max_tokens, room), guided
        )

    def _grammar_guide(self) -> GrammarGuide:
        if self._guide is None:
            self._guide = GrammarGuide(
                self._tokenizer,
                vocab_size=int(self._config.vocab_size),
                stop_token_ids=sorted(self._decoder.eos_ids),
            )
        return self._guide

    async def _stream(
        self,
        prompt_ids: list[int],
        adapter: str,
        sampling: SamplingParams,
        max_new_tokens: int,
        guided: GuidedRow | None = None,
    ) -> AsyncIterator[GenerationEvent]:
        events: asyncio.Queue[GenerationEvent | EngineError] = asyncio.Queue()
        job = Job(prompt_ids, adapter, sampling, max_new_tokens, asyncio.get_running_loop(), events, guided=guided)
        # Under the lock so no job can land behind aclose()'s sentinel, where the worker would never see it.
        with self._lock:
            if self._closed:
                raise EngineError("the engine is closed")
            self._inbox.put(job)
        finished = False
        try:
            while True:
                item = await events.get()
                if isinstance(item, EngineError):
                    finished = True
                    raise item
                finished = item.finish_reason is not None
                yield item
                if finished:
                    return
        finally:
            if not finished:
                job.cancelled = True  # the consumer left early: the worker drops the row at its next step

    async def aclose(self) -> None:
        """Stop the worker thread; generations still running end with :class:`EngineError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._inbox.put(None)
        await asyncio.to_thread(self._thread.join)

    # --- worker thread -------------------------------------------------------------------------------------------

    def _worker(self) -> None:
        stopping = False
        while not stopping:
            first = self._inbox.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + self._batch_wait_s
            while len(batch) < self._max_batch:
                remaining = deadline - time.monotonic()
                try:
                    job = self._inbox.get(timeout=remaining) if remaining > 0 else self._inbox.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            batch = [job for job in batch if not job.cancelled]
            if not batch:
                continue
            try:
                self._decoder.run(batch)
            except Exception as exc:
                logger.exception("generation failed for a batch of %d", len(batch))
                for job in batch:
                    error = EngineError(f"generation failed: {reason(exc)}")
                    error.__cause__ = exc
                    send(job, error)
        while True:  # fail whatever queued behind the close, so no consumer waits forever
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                send(job, EngineError("the engine is closed"))
