"""The ranker's tool loop: look-ups are answered, the submitted candidate ids come back as catalogue ids."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rag.ranker_tools import SUBMIT_CHOICE, RankerToolbox, run_ranker
from retrieval.catalogue import Catalogue, Product


def _catalogue() -> Catalogue:
    attrs = {"base_colour": "Blue", "usage": "Casual"}
    shirts = ("Apparel", "Topwear", "Shirts")
    products = [Product(str(100 + i), f"Brand Men Shirt {i}", shirts, attrs, None) for i in range(6)]
    return Catalogue(root=Path("."), products=products)


def _call(name: str, arguments: Any) -> dict[str, Any]:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": f"call-{name}", "type": "function", "function": {"name": name, "arguments": raw}}


class Scripted:
    """A model that answers from a script and records what it was sent."""

    def __init__(self, *replies: dict[str, Any]) -> None:
        self.replies = list(replies)
        self.seen: list[list[dict[str, Any]]] = []
        self.choices: list[Any] = []

    async def __call__(self, messages: list[dict[str, Any]], tool_choice: Any) -> dict[str, Any]:
        self.seen.append(list(messages))
        self.choices.append(tool_choice)
        return self.replies.pop(0)


def test_lookup_then_submit_resolves_candidate_ids() -> None:
    cat = _catalogue()
    candidates = cat.products[:4]
    model = Scripted(
        {"role": "assistant", "content": "", "tool_calls": [_call("get_products", {"ids": ["B", "105", "ZZ"]})]},
        {"role": "assistant", "content": "", "tool_calls": [_call("submit_ranking", {"ids": ["C", "a", "X"]})]},
    )
    outcome = asyncio.run(run_ranker(model, [{"role": "user", "content": "rank"}], RankerToolbox(cat, candidates)))
    assert outcome.ids == ["102", "100", "X"]  # X is outside the list: left for validation to count
    assert outcome.tool_calls == ["get_products", "submit_ranking"]
    tool_answer = json.loads(model.seen[1][-1]["content"])
    assert [row.get("product_id") for row in tool_answer] == ["101", "105", None]
    assert tool_answer[0]["id"] == "B" and "id" not in tool_answer[1]  # 105 is in the catalogue, not a candidate
    assert tool_answer[2]["error"]


def test_no_submission_is_none_and_bad_arguments_never_raise() -> None:
    cat = _catalogue()
    toolbox = RankerToolbox(cat, cat.products[:3])
    assert "error" in json.loads(asyncio.run(toolbox.call("get_products", {"ids": "A"})))
    assert "error" in json.loads(asyncio.run(toolbox.call("search_catalog", {"query": "shirts"})))  # no search wired in
    assert "error" in json.loads(asyncio.run(toolbox.call("drop_table", {})))
    assert "error" in json.loads(asyncio.run(toolbox.call("get_products", None)))
    text_only = Scripted({"role": "assistant", "content": "I think A is best."})
    outcome = asyncio.run(run_ranker(text_only, [], toolbox))
    assert outcome.ids is None and outcome.raw == "I think A is best."
    broken = Scripted({"role": "assistant", "content": "", "tool_calls": [_call("submit_ranking", "{not json")]})
    assert asyncio.run(run_ranker(broken, [], toolbox)).ids is None
    looping = Scripted(
        *[{"role": "assistant", "content": "", "tool_calls": [_call("get_products", {"ids": ["A"]})]}] * 3
    )
    assert asyncio.run(run_ranker(looping, [], toolbox, max_rounds=3)).ids is None
    # Every round asks for a tool call; the last one names submit_ranking, so a guided server must rank.
    assert looping.choices == ["required", "required", SUBMIT_CHOICE]


def test_search_answers_with_candidate_ids_where_it_can() -> None:
    cat = _catalogue()

    async def search(query: str, k: int, search_filter: Any) -> list[Product]:
        return cat.products[1:4][:k]

    toolbox = RankerToolbox(cat, cat.products[:2], search=search)
    rows = json.loads(asyncio.run(toolbox.call("search_catalog", {"query": "blue shirts"})))
    assert [(r.get("id"), r["product_id"]) for r in rows] == [("B", "101"), (None, "102"), (None, "103")]


def test_search_filters_are_parsed_checked_and_spelled_as_the_catalogue_does() -> None:
    cat = _catalogue()
    seen: list[Any] = []

    async def search(query: str, k: int, search_filter: Any) -> list[Product]:
        seen.append(search_filter)
        return cat.products[:1]

    values = {"base_colour": ["Navy Blue", "Red"], "usage": ["Casual"]}
    toolbox = RankerToolbox(cat, cat.products[:2], search=search, attribute_values=values)
    args = {"query": "shirts", "category": "Apparel > Topwear", "attributes": {"base_colour": ["navy blue", "RED"]}}
    asyncio.run(toolbox.call("search_catalog", args))
    assert seen[-1].category_prefix == ["Apparel", "Topwear"]
    assert seen[-1].attributes == {"base_colour": ["Navy Blue", "Red"]}
    asyncio.run(toolbox.call("search_catalog", {"query": "shirts"}))
    assert seen[-1] is None
    bad = json.loads(asyncio.run(toolbox.call("search_catalog", {"query": "x", "attributes": {"price": "low"}})))
    assert "unknown attribute 'price'" in bad["error"] and len(seen) == 2
    bad = json.loads(asyncio.run(toolbox.call("search_catalog", {"query": "x", "category": 5})))
    assert "category must be a string" in bad["error"]
