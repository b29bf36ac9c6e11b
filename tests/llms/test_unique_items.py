"""uniqueItems on top of the grammar: which next tokens keep a tool call's unique arrays free of repeats."""

from __future__ import annotations

import random

import pytest

from llms.worker.unique_items import UniqueArray, UniqueItemsTracker, unique_arrays


def _tool(name: str, properties: dict[str, object]) -> dict[str, object]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": properties}}}


ENUM = ["A", "B", "AB"]
TOOLS = [
    _tool("rank", {"ids": {"type": "array", "uniqueItems": True, "items": {"type": "string", "enum": ENUM}},
                   "tags": {"type": "array", "items": {"type": "string"}},
                   "names": {"type": "array", "uniqueItems": True, "items": {"type": "string"}}}),
    _tool("other", {"ids": {"type": "array", "items": {"type": "string"}}}),
]  # fmt: skip


def test_only_direct_string_arrays_with_unique_items_are_tracked() -> None:
    assert unique_arrays(TOOLS) == {("rank", "ids"): UniqueArray(frozenset(ENUM)), ("rank", "names"): UniqueArray()}
    assert unique_arrays([_tool("f", {"x": {"type": "string", "uniqueItems": True}})]) == {}


def _tracker(prefix: str) -> UniqueItemsTracker:
    tracker = UniqueItemsTracker(unique_arrays(TOOLS))
    tracker.feed(prefix)
    return tracker


CALL = '<tool_call>\n{"name": "rank", "arguments": {'


def test_a_used_item_cannot_be_closed_again_but_a_longer_one_can_start() -> None:
    tracker = _tracker(CALL + '"ids": ["A", ')
    assert tracker.active
    assert not tracker.allows('"A"') and not tracker.allows('"A",')
    assert tracker.allows('"B"') and tracker.allows('"')
    tracker.feed('"')
    assert tracker.allows("A")  # "AB" is still free, so "A" may continue into it
    assert not tracker.allows('A"')
    tracker.feed('AB", ')
    assert tracker.allows("]")
    tracker.feed('"')
    assert not tracker.allows("A")  # every id starting with "A" is used now
    assert tracker.allows("B")


def test_repeats_inside_one_token_are_refused_and_a_closed_array_frees_the_rest() -> None:
    tracker = _tracker(CALL + '"ids": [')
    assert not tracker.allows('"B", "B"') and tracker.allows('"B", "A"')
    assert tracker.allows('"A"], "tags": ["A"')  # what follows the array is not its business
    tracker.feed('"A"], "tags": [')
    assert not tracker.active and tracker.allows('"A"')


def test_other_functions_arguments_and_keys_are_free() -> None:
    other = UniqueItemsTracker(unique_arrays(TOOLS))
    other.feed('{"name": "other", "arguments": {"ids": ["A", ')
    assert not other.active and other.allows('"A"')
    key_named_like_an_item = _tracker(CALL + '"tags": ["ids"], "names": ["x\\"y", ')
    assert key_named_like_an_item.active
    assert not key_named_like_an_item.allows('"x\\"y"') and key_named_like_an_item.allows('"x"')


@pytest.mark.parametrize("seed", range(5))
def test_any_tokenisation_of_a_call_gives_the_same_answers(seed: int) -> None:
    """Fed whole or in random chunks (as tokens split it), the tracker reaches the same state."""
    text = CALL + '"ids": ["B", "AB", "A"], "names": ["p", "q"]}}'
    fed = text[: text.index('"q"')]
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(fed)), 12))
    chunks = [fed[a:b] for a, b in zip([0, *cuts], [*cuts, len(fed)], strict=True)]
    whole, pieces = _tracker(fed), UniqueItemsTracker(unique_arrays(TOOLS))
    for chunk in chunks:
        pieces.feed(chunk)
    for tracker in (whole, pieces):
        assert not tracker.allows('"p"') and tracker.allows('"q"')
