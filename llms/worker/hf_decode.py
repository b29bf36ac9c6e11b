"""The batched decoding loop of :class:`~llms.worker.hf_engine.TransformersEngine`, run on its worker thread.

A :class:`BatchDecoder` takes a static batch of :class:`Job` s, left-pads their prompts,
prefills them in one forward pass and runs its own KV-cached decode loop: each step masks
guided rows to their grammar, picks every row's next token (greedy, or sampled with the row's
own ``torch.Generator``), streams the text that is safe to show (never the start of a stop
string, never half a UTF-8 character) and drops finished rows from the batch. Events reach
each request's event loop through :func:`send`. The engine owns the inbox and the thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from llms.errors import EngineError
from llms.worker.engine import EngineStats, FinishReason, GenerationEvent, SamplingParams
from llms.worker.guided import GuidedRow
from llms.worker.prefix_cache import KVPrefixCache, common_prefix

__all__ = ["BatchDecoder", "Job", "send"]

_REPLACEMENT_CHAR = "\ufffd"  # what decode yields for a UTF-8 sequence whose last bytes are still to come


@dataclass(eq=False)
class Job:
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
class Row:
    """A job's decoding state inside a batch."""

    job: Job
    generator: torch.Generator | None
    token_ids: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the decoded text already sent


def send(job: Job, item: GenerationEvent | EngineError) -> None:
    """Hand ``item`` to the job's consumer on its event loop (this runs on the worker thread)."""
    try:
        job.loop.call_soon_threadsafe(job.events.put_nowait, item)
    except RuntimeError:
        job.cancelled = True  # the consumer's event loop is gone


class BatchDecoder:
    """Decodes batches of jobs on one model; only the engine's worker thread calls :meth:`run`.

    ``mixed_adapters``: the model is a ``PeftModel``, so each forward names every row's adapter.
    ``is_closed`` tells whether the engine closed: rows still running then end with an error.
    ``prefix_cache``: a batch of one reuses the KV of a recent prompt that started the same way
    (left-padded batches of several rows prefill in full).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: torch.device,
        mixed_adapters: bool,
        stats: EngineStats,
        is_closed: Callable[[], bool],
        prefix_cache: KVPrefixCache | None = None,
    ) -> None:
        self._model = model
        self._prefix = prefix_cache
        self._tokenizer = tokenizer
        self._device = device
        self._mixed_adapters = mixed_adapters
        self._stats = stats
        self._is_closed = is_closed
        config = model.config
        self._config = config
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
        self.eos_ids = frozenset(eos)  # the guided grammar stops on these too
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else min(eos, default=0)

    def run(self, jobs: list[Job]) -> None:
        """Prefill ``jobs`` together, then decode them step by step until every row has finished or left."""
        stats = self._stats
        stats.requests += len(jobs)
        stats.batches += 1
        stats.batched_rows += len(jobs)
        stats.max_batch = max(stats.max_batch, len(jobs))

        rows = [Row(job, self._make_generator(job.sampling)) for job in jobs]
        # A guided answer often starts with text the grammar fixes ('<tool_call>\n{"name": "'): prefilled with the
        # prompt, it costs no decoding step.
        feeds = [job.guided.forced() if job.guided is not None else [] for job in jobs]
        prompts = [job.prompt_ids + feed for job, feed in zip(jobs, feeds, strict=True)]
        stats.prompt_tokens += sum(len(ids) for ids in prompts)
        with torch.inference_mode():
            cache, input_ids, mask, positions = self._prefill(jobs, prompts)
        # What a batch of one prefilled is kept for the next prompt that starts the same way.
        keep_prompt = prompts[0] if len(jobs) == 1 and self._prefix is not None else None
        next_position = [len(ids) for ids in prompts]
        active = [row for row, feed in zip(rows, feeds, strict=True) if not self._advance_all(row, feed)]
        if len(active) < len(rows):  # a forced prefix already finished a row (max_tokens 1, say): drop it
            keep_index = [i for i, row in enumerate(rows) if row in active]
            input_ids, mask, positions = input_ids[keep_index], mask[keep_index], positions[keep_index]
            next_position = [next_position[i] for i in keep_index]
            if active and cache.get_seq_length() > 0:  # rows already share a prefix's KV: drop theirs too
                cache.batch_select_indices(torch.tensor(keep_index, dtype=torch.long, device=self._device))

        with torch.inference_mode():
            while active:
                logits = self._forward(input_ids, mask, positions, cache, [row.job.adapter for row in active])
                if keep_prompt is not None and self._prefix is not None:
                    self._prefix.store(jobs[0].adapter, keep_prompt, cache)  # before decoding appends to it
                    keep_prompt = None
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

    def _prefill(
        self, jobs: list[Job], prompts: list[list[int]]
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cache the batch decodes into and its first forward's inputs, without recomputing a known prefix.

        A batch of one starts from the longest prefix the prefix cache holds. Rows of one adapter
        that start alike (the explainer's sentences of one turn: the same instructions and
        examples) compute their common prefix once, as one row, keep it in the prefix cache, and
        share its KV; rows of different adapters, or unlike rows, prefill in full.
        """
        from transformers import DynamicCache  # noqa: PLC0415 - lazy: transformers costs seconds of start-up; only this path needs it

        fresh = DynamicCache(config=self._config)
        adapter = jobs[0].adapter
        if self._prefix is None or any(job.adapter != adapter for job in jobs):
            return fresh, *self._prefill_tensors(prompts, 0)
        if len(prompts) == 1:
            reused, kv = self._prefix.lookup(adapter, prompts[0])
            if kv is None:
                return fresh, *self._prefill_tensors(prompts, 0)
            self._stats.prefix_hits += 1
            self._stats.prefix_tokens_reused += reused
            return kv, *self._prefill_tensors(prompts, reused)
        # Every row keeps at least one token of its own to read.
        shared = min([common_prefix(prompts[0], ids) for ids in prompts[1:]] + [len(ids) - 1 for ids in prompts])
        if shared < self._prefix.min_tokens:
            return fresh, *self._prefill_tensors(prompts, 0)
        head = prompts[0][:shared]
        reused, kv = self._prefix.lookup(adapter, head)
        if kv is None:
            reused, kv = 0, fresh
        else:
            self._stats.prefix_hits += 1
        tail = torch.tensor([head[reused:]], dtype=torch.long, device=self._device)
        self._forward(tail, torch.ones((1, shared), dtype=torch.long, device=self._device),
                      torch.arange(reused, shared, device=self._device)[None], kv, [adapter])  # fmt: skip
        self._prefix.store(adapter, head, kv)
        self._stats.prefix_tokens_reused += reused + shared * (len(prompts) - 1)
        kv.batch_repeat_interleave(len(prompts))
        return kv, *self._prefill_tensors(prompts, shared)

    def _prefill_tensors(self, prompts: list[list[int]], start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prefill's inputs for every prompt's tokens from ``start`` on, the first ``start`` being in the cache.

        The rest of each prompt is left-padded to one width and sits after the cached tokens,
        padding between them masked out (as decoding's feeds are), so positions still count on
        from the cached tokens; with ``start`` 0 this is plain left padding.
        """
        width = max(len(ids) - start for ids in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), start + width), dtype=torch.long)
        mask[:, :start] = 1
        for i, ids in enumerate(prompts):
            rest = ids[start:]
            input_ids[i, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            mask[i, start + width - len(rest) :] = 1
        # Padding shifts each row's tokens right; positions must still count on from its last real token.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]
        return input_ids.to(self._device), mask.to(self._device), positions.to(self._device)

    def _step(self, active: list[Row], logits: torch.Tensor) -> tuple[list[int], list[list[int]]]:
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
            if self._is_closed():
                send(row.job, EngineError("the engine closed before the generation finished"))
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

    def _advance_all(self, row: Row, tokens: list[int]) -> bool:
        """:meth:`_advance` each token in turn; whether the row finished on one of them."""
        return any(self._advance(row, token) for token in tokens)

    def _forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, adapters: list[str]
    ) -> torch.Tensor:
        self._stats.forward_passes += 1
        kwargs: dict[str, Any] = {}
        if self._mixed_adapters:
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
    def _sample(logits: torch.Tensor, sampling: SamplingParams, row: Row) -> int:
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

    def _advance(self, row: Row, token: int) -> bool:
        """Append ``token`` to ``row``, stream what is safe to show, and report whether the row finished."""
        job = row.job
        row.token_ids.append(token)
        self._stats.completion_tokens += 1
        if token in self.eos_ids:
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
            send(job, GenerationEvent(text=text[row.emitted : safe]))
            row.emitted = safe
        return False

    def _finish(self, row: Row, text: str, reason: FinishReason) -> None:
        event = GenerationEvent(
            text=text[row.emitted :],
            finish_reason=reason,
            prompt_tokens=len(row.job.prompt_ids),
            completion_tokens=len(row.token_ids),
        )
        row.emitted = len(text)
        send(row.job, event)

    def _decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text
