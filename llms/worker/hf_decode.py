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
    ) -> None:
        self._model = model
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
        from transformers import DynamicCache  # noqa: PLC0415 - lazy: transformers costs seconds of start-up; only this path needs it

        stats = self._stats
        stats.requests += len(jobs)
        stats.batches += 1
        stats.batched_rows += len(jobs)
        stats.max_batch = max(stats.max_batch, len(jobs))

        rows = [Row(job, self._make_generator(job.sampling)) for job in jobs]
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
