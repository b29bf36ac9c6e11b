"""Guided tool calls: with ``tool_choice`` "required" or a named function, only schema-valid calls can be written.

vLLM answers such requests with guided decoding (the JSON schemas of the tools become a
grammar); the embedded worker does the same with xgrammar, the grammar engine vLLM uses. The
output format is the Hermes/Qwen one Tandem's chat template teaches::

    <tool_call>
    {"name": "submit_ranking", "arguments": {"ids": ["C", "A", "B"]}}
    </tool_call>

so the call is well-formed JSON that fits its tool's schema (an ``enum`` of ids included) under
greedy decoding and under any temperature, top-k or top-p: hot sampling can change *which*
answer, not break its form. ``uniqueItems``, which no grammar can express, is enforced on top
(:mod:`llms.worker.unique_items`): a sampled ranking holds each id once.

Example:
    >>> guide = ToolCallGuide(tokenizer, vocab_size=4096, stop_token_ids=[2])  # doctest: +SKIP
    >>> row = guide.start(tools, "required")  # doctest: +SKIP
    >>> row.mask(logits); token = int(logits.argmax()); row.accept(token)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from llms.errors import InvalidChatRequestError
from llms.worker.unique_items import UniqueItemsTracker, unique_arrays

__all__ = ["GuidedRow", "ToolCallGuide", "is_guided"]

# The Hermes format with no <think> block: xgrammar's "qwen_3" structural tag writes exactly
# '<tool_call>\n{"name": "<name>", "arguments": <json>}\n</tool_call>'.
_FORMAT = "qwen_3"
_MAX_WHITESPACE = 2  # inside the JSON; more only lets a hot sampler wander off in blanks


def is_guided(tools: Sequence[dict[str, Any]] | None, tool_choice: Any) -> bool:
    """Whether a request asks for a tool call the server must guarantee (OpenAI's required / named choice)."""
    return bool(tools) and (tool_choice == "required" or isinstance(tool_choice, dict))


class GuidedRow:
    """One generation's grammar state: masks the next token's logits and follows the tokens chosen."""

    def __init__(
        self,
        matcher: Any,
        vocab_size: int,
        unique: UniqueItemsTracker | None = None,
        token_texts: Sequence[str] = (),
    ) -> None:
        import xgrammar as xgr

        self._matcher = matcher
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._vocab_size = vocab_size
        self._unique = unique
        self._texts = token_texts

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to -inf (in place; a 1-D row of the vocabulary)."""
        import xgrammar as xgr

        self._matcher.fill_next_token_bitmask(self._bitmask)
        row = logits.view(1, -1)
        xgr.apply_token_bitmask_inplace(row, self._bitmask.to(logits.device), vocab_size=self._vocab_size)
        if self._unique is not None and self._unique.active:
            allowed = torch.isfinite(logits[: len(self._texts)]).nonzero().flatten().tolist()
            repeats = [t for t in allowed if not self._unique.allows(self._texts[t])]
            # Never a dead end: if every token the grammar allows repeats an item, the grammar alone decides.
            if repeats and len(repeats) < len(allowed):
                logits[repeats] = float("-inf")

    def accept(self, token: int) -> None:
        # Only a masked token can be chosen, so refusal means a bug, not bad input.
        if not self._matcher.is_terminated() and not self._matcher.accept_token(token):
            raise RuntimeError(f"guided decoding: the grammar refused token {token}")
        if self._unique is not None and token < len(self._texts):
            self._unique.feed(self._texts[token])


class ToolCallGuide:
    """Compiles (and caches) the grammar of a request's tools for one tokenizer; see the module doc."""

    def __init__(self, tokenizer: Any, *, vocab_size: int, stop_token_ids: Sequence[int], cache_size: int = 64) -> None:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids))
        self._compiler = xgr.GrammarCompiler(info)
        self._vocab_size = vocab_size
        self._tokenizer = tokenizer
        self._texts: list[str] | None = None  # each token's text, decoded once at the first uniqueItems request
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # requests compile on the event loop, rows decode on the worker thread

    def start(self, tools: Sequence[dict[str, Any]], tool_choice: Any) -> GuidedRow:
        """A fresh grammar state for one generation; a schema the grammar cannot express is the caller's error."""
        import xgrammar as xgr

        key = json.dumps([tools, tool_choice], sort_keys=True)
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
        if compiled is None:
            try:
                tag = xgr.get_model_structural_tag(
                    _FORMAT,
                    tools=list(tools),
                    tool_choice=tool_choice,
                    reasoning="disabled",
                    max_whitespace_cnt=_MAX_WHITESPACE,
                    parallel_tool_calls=False,
                )
                compiled = self._compiler.compile_structural_tag(tag)
            except (ValueError, RuntimeError, TypeError, KeyError) as exc:
                raise InvalidChatRequestError(f"cannot guide tool calls with these tools: {exc}") from exc
            with self._lock:
                self._cache[key] = compiled
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        arrays = unique_arrays(tools)
        if not arrays:
            return GuidedRow(xgr.GrammarMatcher(compiled), self._vocab_size)
        return GuidedRow(
            xgr.GrammarMatcher(compiled), self._vocab_size, UniqueItemsTracker(arrays), self._token_texts()
        )

    def _token_texts(self) -> list[str]:
        with self._lock:
            if self._texts is None:
                size = min(self._vocab_size, len(self._tokenizer))
                self._texts = [self._tokenizer.decode([i]) for i in range(size)]
            return self._texts
