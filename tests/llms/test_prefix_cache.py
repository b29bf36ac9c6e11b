"""KVPrefixCache on a stand-in cache object: longest common prefix per adapter, cropped copies, token budget."""

from __future__ import annotations

import random

import pytest

from llms.worker.prefix_cache import KVPrefixCache, common_prefix


class FakeKV:
    """Holds the token ids it 'caches', as a transformers Cache holds their keys and values."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = list(ids)

    def crop(self, tokens_to_remove: int) -> None:
        # transformers 5's contract: a negative count of tokens to drop from the end.
        assert tokens_to_remove < 0
        self.ids = self.ids[:tokens_to_remove]


def _lcp_oracle(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_common_prefix_matches_a_plain_loop() -> None:
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.randrange(3) for _ in range(rng.randrange(0, 12))]
        b = [rng.randrange(3) for _ in range(rng.randrange(0, 12))]
        assert common_prefix(a, b) == _lcp_oracle(a, b)


def test_lookup_reuses_the_longest_stored_prefix_of_the_same_adapter_as_a_cropped_copy() -> None:
    cache = KVPrefixCache(max_tokens=1000, min_tokens=4)
    system = list(range(100, 140))
    short, long_ = [*system[:10], 1, 2, 3, 4, 5], [*system, 7, 8, 9]
    cache.store("ranker", short, FakeKV(short))
    cache.store("ranker", long_, FakeKV(long_))
    cache.store("base", [*system, 50, 51], FakeKV([*system, 50, 51]))
    prompt = [*system, 7, 8, 1]
    n, kv = cache.lookup("ranker", prompt)
    assert n == _lcp_oracle(long_, prompt) == len(system) + 2
    assert kv.ids == prompt[:n]
    # A copy: the caller appends to it, and the stored entry stays whole.
    kv.ids.append(99)
    assert cache.lookup("ranker", [*long_, 0])[1].ids == long_
    assert cache.lookup("explainer", prompt) == (0, None)  # another adapter's KV is another model's


def test_at_least_one_token_is_left_to_read_and_short_prefixes_are_not_worth_it() -> None:
    cache = KVPrefixCache(max_tokens=1000, min_tokens=8)
    ids = list(range(20))
    cache.store("base", ids, FakeKV(ids))
    n, kv = cache.lookup("base", ids)  # the same prompt again
    assert n == len(ids) - 1 and kv.ids == ids[:-1]
    assert cache.lookup("base", ids[:5] + [99] * 10) == (0, None)  # 5 shared tokens < min_tokens


def test_the_token_budget_evicts_least_recently_used_first() -> None:
    cache = KVPrefixCache(max_tokens=100, min_tokens=4)
    a, b, c = ([k] * 40 for k in (1, 2, 3))
    cache.store("m", a, FakeKV(a))
    cache.store("m", b, FakeKV(b))
    assert cache.lookup("m", [*a, 0])[0] == 40  # a is now the most recently used
    cache.store("m", c, FakeKV(c))  # 120 tokens > 100: b goes
    assert cache.tokens == 80 and len(cache) == 2
    assert cache.lookup("m", [*b, 0]) == (0, None)
    assert cache.lookup("m", [*a, 0])[0] == cache.lookup("m", [*c, 0])[0] == 40
    cache.store("m", [5] * 101, FakeKV([5] * 101))  # larger than the whole budget: not kept
    assert cache.tokens == 80


def test_a_stored_prompt_that_a_longer_one_extends_is_replaced() -> None:
    cache = KVPrefixCache(max_tokens=1000, min_tokens=4)
    first = list(range(30))
    cache.store("m", first, FakeKV(first))
    cache.store("m", [*first, 1, 2], FakeKV([*first, 1, 2]))
    assert len(cache) == 1 and cache.tokens == 32


@pytest.mark.parametrize("budget", [0, -1])
def test_a_budget_of_zero_keeps_nothing(budget: int) -> None:
    cache = KVPrefixCache(max_tokens=budget, min_tokens=1)
    cache.store("m", [1, 2, 3], FakeKV([1, 2, 3]))
    assert len(cache) == 0 and cache.lookup("m", [1, 2, 3, 4]) == (0, None)
