"""A transformers + peft engine: one base model, many LoRA adapters, batched decoding on one worker thread.

Requests queue on a thread-safe inbox. The worker thread takes the first one, waits up to
``batch_wait_ms`` for more (up to ``max_batch``), left-pads the prompts, prefills them in one
forward pass and then runs its own KV-cached decode loop for that static batch. Rows of one
batch may use different adapters (peft's mixed-adapter batches, ``adapter_names=[...]``) and
different sampling parameters; each sampled row owns a ``torch.Generator`` seeded from its
request, so a seeded request samples the same tokens whoever its batch-mates are. A request
with ``tool_choice`` "required" or a named function is decoded under its tools' grammar
(:mod:`llms.worker.guided`), as vLLM's guided decoding does. Text deltas cross back to the
caller's event loop with ``call_soon_threadsafe``.

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
import warnings
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llms.errors import EngineError
from llms.worker.engine import EngineStats, FinishReason, GenerationEvent, GenerationRequest, SamplingParams
from llms.worker.guided import GrammarGuide, GuidedRow

__all__ = ["BASE_ADAPTER", "TransformersEngine", "cpu_has_fast_bf16", "resolve_dtype"]

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch
_REPLACEMENT_CHAR = "\ufffd"  # what decode yields for a UTF-8 sequence whose last bytes are still to come


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message: third-party errors can span pages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


def _stop_worker(inbox: queue.Queue[_Job | None], thread: threading.Thread) -> None:
    inbox.put(None)
    thread.join(timeout=5.0)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX-512 BF16): then bf16 prefills ~3x faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def resolve_dtype(dtype: str, device: torch.device) -> Any:
    """``auto``: the checkpoint's dtype on CUDA; on a CPU bfloat16 where it has bf16 units, else float32.

    Example:
        >>> resolve_dtype("float32", torch.device("cpu"))
        torch.float32
    """
    if dtype == "auto":
        if device.type != "cpu":
            return "auto"
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise EngineError(f"unknown dtype {dtype!r} (auto, float32, bfloat16, float16)")
    return value


def _validate_sampling(params: SamplingParams) -> None:
    if params.max_tokens < 1:
        raise EngineError(f"max_tokens must be at least 1, got {params.max_tokens}")
    if params.temperature < 0:
        raise EngineError(f"temperature must be >= 0, got {params.temperature}")
    if not 0.0 < params.top_p <= 1.0:
        raise EngineError(f"top_p must be in (0, 1], got {params.top_p}")
    if params.top_k < 0:
        raise EngineError(f"top_k must be >= 0, got {params.top_k}")


@dataclass(eq=False)
class _Job:
    """One request on its way through the worker; ``cancelled`` is set from the event loop, read by the worker."""

    prompt_ids: list[int]
    adapter: str
    sampling: SamplingParams
    max_new_tokens: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[GenerationEvent | EngineError]
    cancelled: bool = False
    guided: GuidedRow | None = None  # the grammar of a required tool call or a JSON answer


@dataclass(eq=False)
class _Row:
    """A job's decoding state inside a batch."""

    job: _Job
    generator: torch.Generator | None
    token_ids: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the decoded text already sent


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
    ) -> None:
        """Wrap an already loaded model; use :meth:`load` instead of calling this directly."""
        self._model = model
        self._tokenizer = tokenizer
        self._model_name = model_name
        self._adapters = tuple(adapters)
        self._device = device
        self._max_batch = max_batch
        self._batch_wait_s = batch_wait_ms / 1000.0
        self._stats = EngineStats()

        config = model.config
        self._config = config
        self._context_len = int(getattr(config, "max_position_embeddings", 0) or tokenizer.model_max_length)
        # The embedding matrix is often padded past the tokenizer's vocabulary; those ids decode to nothing.
        self._vocab_limit = len(tokenizer)
        eos: set[int] = set()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, config.eos_token_id, tokenizer.eos_token_id):
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, (list, tuple)):
                eos.update(int(v) for v in value)
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
            eos.add(im_end)
        self._eos_ids = frozenset(eos)
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else min(eos, default=0)
        self._guide: GrammarGuide | None = None  # built at the first guided request (xgrammar's tokenizer scan)

        self._inbox: queue.Queue[_Job | None] = queue.Queue()
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
        if not model_dir.is_dir():
            raise EngineError(f"model directory {model_dir} does not exist")
        if not (model_dir / "config.json").is_file():
            raise EngineError(f"model directory {model_dir} has no config.json")
        for name, path in adapters.items():
            if not name or name == BASE_ADAPTER:
                raise EngineError(f"invalid adapter name {name!r}")
            if not (Path(path) / "adapter_config.json").is_file():
                raise EngineError(f"adapter {name!r}: {path} has no adapter_config.json")
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            torch_device = torch.device(device)
        except RuntimeError as exc:
            raise EngineError(f"invalid device {device!r}: {_reason(exc)}") from exc
        if torch_device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("device 'cuda' requested but CUDA is not available")

        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except Exception as exc:
            raise EngineError(f"cannot load the tokenizer from {model_dir}: {_reason(exc)}") from exc
        if not getattr(tokenizer, "chat_template", None):
            raise EngineError(f"the tokenizer in {model_dir} has no chat template")

        torch_dtype = resolve_dtype(dtype, torch_device)
        model: Any
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch_dtype)
            model = model.to(torch_device)
        except Exception as exc:
            raise EngineError(f"cannot load the model from {model_dir}: {_reason(exc)}") from exc

        if adapters:
            from peft import PeftModel

            names = list(adapters)
            current = names[0]
            try:
                with warnings.catch_warnings():
                    # peft asks transformers' deprecated is_gradient_checkpointing: noise in every CLI run.
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                    peft_model = PeftModel.from_pretrained(
                        model, str(adapters[current]), adapter_name=current, is_trainable=False
                    )
                for current in names[1:]:
                    peft_model.load_adapter(str(adapters[current]), adapter_name=current, is_trainable=False)
                model = peft_model.to(torch_device)
            except Exception as exc:
                raise EngineError(f"cannot load adapter {current!r} from {adapters[current]}: {_reason(exc)}") from exc
        model.eval()
        return cls(
            model=model,
            tokenizer=tokenizer,
            model_name=model_dir.resolve().name,
            adapters=list(adapters),
            device=torch_device,
            max_batch=max_batch,
            batch_wait_ms=batch_wait_ms,
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
            raise EngineError(f"cannot render the chat template: {_reason(exc)}") from exc
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
                self._tokenizer, vocab_size=int(self._config.vocab_size), stop_token_ids=sorted(self._eos_ids)
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
        job = _Job(prompt_ids, adapter, sampling, max_new_tokens, asyncio.get_running_loop(), events, guided=guided)
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
                self._run_batch(batch)
            except Exception as exc:
                logger.exception("generation failed for a batch of %d", len(batch))
                for job in batch:
                    error = EngineError(f"generation failed: {_reason(exc)}")
                    error.__cause__ = exc
                    self._send(job, error)
        while True:  # fail whatever queued behind the close, so no consumer waits forever
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._send(job, EngineError("the engine is closed"))

    def _send(self, job: _Job, item: GenerationEvent | EngineError) -> None:
        try:
            job.loop.call_soon_threadsafe(job.events.put_nowait, item)
        except RuntimeError:
            job.cancelled = True  # the consumer's event loop is gone

    def _run_batch(self, jobs: list[_Job]) -> None:
        from transformers import DynamicCache

        stats = self._stats
        stats.requests += len(jobs)
        stats.batches += 1
        stats.batched_rows += len(jobs)
        stats.max_batch = max(stats.max_batch, len(jobs))

        rows = [_Row(job, self._make_generator(job.sampling)) for job in jobs]
        # A guided answer often starts with text the grammar fixes ('<tool_call>\n{"name": "'): prefilled with the
        # prompt, it costs no decoding step.
        feeds = [job.guided.forced() if job.guided is not None else [] for job in jobs]
        width = max(len(job.prompt_ids) + len(feed) for job, feed in zip(jobs, feeds, strict=True))
        input_ids = torch.full((len(jobs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, (job, feed) in enumerate(zip(jobs, feeds, strict=True)):
            ids = job.prompt_ids + feed
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[i, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(self._device), mask.to(self._device)
        # Left padding shifts each row's tokens right; positions must still count from 0 at the first real token.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        next_position = [len(job.prompt_ids) + len(feed) for job, feed in zip(jobs, feeds, strict=True)]
        cache = DynamicCache(config=self._config)
        active = [row for row, feed in zip(rows, feeds, strict=True) if not self._advance_all(row, feed)]
        if len(active) < len(rows):  # a forced prefix already finished a row (max_tokens 1, say): drop it
            keep_index = [i for i, row in enumerate(rows) if row in active]
            input_ids, mask, positions = input_ids[keep_index], mask[keep_index], positions[keep_index]
            next_position = [next_position[i] for i in keep_index]

        with torch.inference_mode():
            while active:
                logits = self._forward(input_ids, mask, positions, cache, [row.job.adapter for row in active])
                keep, feeds = self._step(active, logits)
                if not keep:
                    break
                if len(keep) < len(active):
                    # Finished rows leave the batch so the remaining ones stop paying for them.
                    index = torch.tensor(keep, dtype=torch.long, device=self._device)
                    cache.batch_select_indices(index)
                    mask = mask[index]
                    active = [active[i] for i in keep]
                    next_position = [next_position[i] for i in keep]
                input_ids, new_mask, positions = self._feed_tensors(feeds, next_position)
                mask = torch.cat([mask, new_mask], dim=1)
                next_position = [p + len(f) for p, f in zip(next_position, feeds, strict=True)]

    def _step(self, active: list[_Row], logits: torch.Tensor) -> tuple[list[int], list[list[int]]]:
        """Choose each row's next token (and the forced ones after it); the rows that go on and what they feed next."""
        for i, row in enumerate(active):
            if row.job.guided is not None:
                row.job.guided.mask(logits[i])
        greedy = logits.argmax(dim=-1).tolist()
        keep: list[int] = []
        feeds: list[list[int]] = []
        for i, row in enumerate(active):
            if row.job.cancelled:
                continue
            if self._closed:
                self._send(row.job, EngineError("the engine closed before the generation finished"))
                continue
            sampling = row.job.sampling
            token = greedy[i] if sampling.temperature == 0 else self._sample(logits[i], sampling, row)
            guided = row.job.guided
            feed = [token]
            if guided is not None:
                guided.accept(token)
                feed += guided.forced()
            if self._advance_all(row, feed):
                continue
            if guided is not None and guided.completed:
                # The call (or JSON value) is whole: the only token left is a stop token, not worth a forward pass.
                self._finish(row, self._decode(row.token_ids), "stop")
                continue
            keep.append(i)
            feeds.append(feed)
        return keep, feeds

    def _feed_tensors(
        self, feeds: list[list[int]], next_position: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next forward's inputs: rows feed different numbers of tokens, so shorter feeds are padded on the left.

        A padding token sits in the KV cache masked out for every later query, as left padding of
        the prompt does, so a row's own tokens see exactly what they would alone.
        """
        width = max(len(f) for f in feeds)
        input_ids = torch.full((len(feeds), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(feeds), width), dtype=torch.long)
        positions = torch.zeros((len(feeds), width), dtype=torch.long)
        for r, (feed, start) in enumerate(zip(feeds, next_position, strict=True)):
            input_ids[r, width - len(feed) :] = torch.tensor(feed, dtype=torch.long)
            mask[r, width - len(feed) :] = 1
            positions[r] = torch.arange(start - width + len(feed), start + len(feed)).clamp(min=0)
        return input_ids.to(self._device), mask.to(self._device), positions.to(self._device)

    def _advance_all(self, row: _Row, tokens: list[int]) -> bool:
        """:meth:`_advance` each token in turn; whether the row finished on one of them."""
        return any(self._advance(row, token) for token in tokens)

    def _forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, adapters: list[str]
    ) -> torch.Tensor:
        self._stats.forward_passes += 1
        kwargs: dict[str, Any] = {}
        if self._adapters:
            kwargs["adapter_names"] = adapters
        out = self._model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        logits: torch.Tensor = out.logits[:, -1, :].float()
        if logits.shape[-1] > self._vocab_limit:
            logits[:, self._vocab_limit :] = float("-inf")
        return logits

    def _make_generator(self, sampling: SamplingParams) -> torch.Generator | None:
        if sampling.temperature == 0:
            return None
        generator = torch.Generator(device=self._device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        return generator

    @staticmethod
    def _sample(logits: torch.Tensor, sampling: SamplingParams, row: _Row) -> int:
        scores = logits / sampling.temperature
        if 0 < sampling.top_k < scores.shape[-1]:
            kth = torch.topk(scores, sampling.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if sampling.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            probs = torch.softmax(sorted_scores, dim=-1)
            # Drop a token once the tokens before it already reach top_p; the most likely token always stays.
            drop = (probs.cumsum(dim=-1) - probs) >= sampling.top_p
            sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=row.generator).item())

    def _advance(self, row: _Row, token: int) -> bool:
        """Append ``token`` to ``row``, stream what is safe to show, and report whether the row finished."""
        job = row.job
        row.token_ids.append(token)
        self._stats.completion_tokens += 1
        if token in self._eos_ids:
            self._finish(row, self._decode(row.token_ids[:-1]), "stop")
            return True
        text = self._decode(row.token_ids)
        cut = min((i for i in (text.find(s) for s in job.sampling.stop if s) if i >= 0), default=-1)
        if cut >= 0:
            self._finish(row, text[:cut], "stop")
            return True
        if len(row.token_ids) >= job.max_new_tokens:
            self._finish(row, text, "length")
            return True
        end = len(text.rstrip(_REPLACEMENT_CHAR))
        held = 0
        for stop in job.sampling.stop:
            # Hold back a tail that could be the start of a stop string: it must not reach the client if it is.
            for k in range(min(len(stop) - 1, end), held, -1):
                if text.endswith(stop[:k], 0, end):
                    held = k
                    break
        safe = end - held
        if safe > row.emitted:
            self._send(job, GenerationEvent(text=text[row.emitted : safe]))
            row.emitted = safe
        return False

    def _finish(self, row: _Row, text: str, reason: FinishReason) -> None:
        event = GenerationEvent(
            text=text[row.emitted :],
            finish_reason=reason,
            prompt_tokens=len(row.job.prompt_ids),
            completion_tokens=len(row.token_ids),
        )
        row.emitted = len(text)
        self._send(row.job, event)

    def _decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text
