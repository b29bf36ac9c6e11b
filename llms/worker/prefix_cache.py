"""Prompt prefix caching for the embedded engine: a prompt that starts like a recent one prefills only the rest.

Every ranker request opens with the same system text and tools schema (about 575 of its ~900
tokens with SmolLM2's template) and every explainer request with the same instructions and
examples; on a CPU, prefilling them again is most of the time to the first token. vLLM
(automatic prefix caching) and llama.cpp's server (prompt cache) keep the KV cache of earlier
prompts for this; so does this engine, the llama.cpp way: it keeps the KV of a few recent
prompts per adapter and, for a new prompt, reuses the longest common token prefix of any of
them (cropped copy), so there is no need to know where the "static" part ends.

The KV of a LoRA-adapted model depends on the adapter, so entries are per adapter. Entries are
evicted least recently used first, within a budget of cached tokens.

Example:
    >>> cache = KVPrefixCache(max_tokens=4096)
    >>> cache.lookup("ranker", [1, 2, 3])  # nothing stored yet
    (0, None)
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KVPrefixCache", "common_prefix"]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n


@dataclass
class _Entry:
    ids: tuple[int, ...]
    kv: Any  # a transformers Cache holding exactly ``ids``, batch of one


class KVPrefixCache:
    """The KV caches of recent prompts, per adapter, reused by longest common token prefix.

    ``lookup`` returns a private, cropped copy (the caller's decoding appends to it); ``store``
    keeps a copy of what it is given. Not thread-safe: the engine's worker thread alone uses it.
    """

    def __init__(self, max_tokens: int, *, min_tokens: int = 32) -> None:
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens  # a shorter shared prefix is not worth a copy of the cache
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], _Entry] = OrderedDict()
        self._tokens = 0

    @property
    def tokens(self) -> int:
        """Tokens whose KV is held now."""
        return self._tokens

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, adapter: str, ids: Sequence[int]) -> tuple[int, Any | None]:
        """``(n, kv)``: a copy of the KV of ``ids[:n]`` for the longest stored prefix, or ``(0, None)``.

        ``n`` stops one token short of the whole prompt: the model must still read at least its
        last token to give the next token's logits.
        """
        best_key, best = None, 0
        for key, entry in self._entries.items():
            if key[0] != adapter:
                continue
            n = common_prefix(entry.ids, ids)
            if n > best:
                best_key, best = key, n
        best = min(best, len(ids) - 1)
        if best_key is None or best < self.min_tokens:
            return 0, None
        self._entries.move_to_end(best_key)
        entry = self._entries[best_key]
        kv = copy.deepcopy(entry.kv)
        if best < len(entry.ids):
            kv.crop(best - len(entry.ids))  # a negative count removes that many tokens from the end (any version)
        return best, kv

    def store(self, adapter: str, ids: Sequence[int], kv: Any) -> None:
        """Keep a copy of ``kv`` (the KV of exactly ``ids``) for later prompts that start the same way."""
        if self.max_tokens <= 0 or len(ids) < self.min_tokens or len(ids) > self.max_tokens:
            return
        key = (adapter, tuple(ids))
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        # A stored prompt that is a prefix of this one adds nothing this one does not hold.
        for old_key in [
            k for k, e in self._entries.items() if k[0] == adapter and common_prefix(e.ids, ids) == len(e.ids)
        ]:
            self._drop(old_key)
        self._entries[key] = _Entry(key[1], copy.deepcopy(kv))
        self._tokens += len(ids)
        while self._tokens > self.max_tokens:
            self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0

    def _drop(self, key: tuple[str, tuple[int, ...]]) -> None:
        entry = self._entries.pop(key)
        self._tokens -= len(entry.ids)
