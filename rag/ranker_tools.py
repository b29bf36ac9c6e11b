"""The ranker's tools over one request, and the tool loop that ends in ``submit_ranking``.

The ranker may look candidates up (``get_products``) or search the catalogue
(``search_catalog``) before it submits; :func:`run_ranker` executes those calls, feeds the
answers back, and stops at the first ``submit_ranking`` call or after ``max_rounds``.

Example:
    >>> toolbox = RankerToolbox(catalogue, candidates)  # doctest: +SKIP
    >>> outcome = await run_ranker(complete, messages, toolbox)  # doctest: +SKIP
    >>> outcome.ids  # catalogue ids, in the model's order  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llms.client import ChatClient
from rag.ranker_format import describe_product, handles, resolve_ids
from retrieval.catalogue import CATEGORY_SEPARATOR, Product
from retrieval.store import SearchFilter

__all__ = [
    "SUBMIT_CHOICE",
    "Complete",
    "ProductSource",
    "RankerOutcome",
    "RankerToolbox",
    "SearchProducts",
    "ranker_completion",
    "run_ranker",
]

SearchProducts = Callable[[str, int, SearchFilter | None], Awaitable[Sequence[Product]]]
# (transcript, tool_choice): "required" on every round but the last, which names submit_ranking.
Complete = Callable[[list[dict[str, Any]], Any], Awaitable[dict[str, Any]]]
SUBMIT_CHOICE: dict[str, Any] = {"type": "function", "function": {"name": "submit_ranking"}}


def ranker_completion(
    llm: ChatClient,
    model: str,
    tools: list[dict[str, Any]],
    *,
    max_tokens: int,
    sampling: Mapping[str, Any] | None = None,
    deadline_s: float | None = None,
    user: str | None = None,
) -> Complete:
    """One ranker round as every caller asks it: greedy unless ``sampling`` says otherwise, a tool call required.

    A required tool call lets a server with guided decoding (vLLM, the embedded worker) always
    write a well-formed one, whatever the sampling knobs; the ids in it are validated afterwards.
    """
    knobs = {"temperature": 0.0, **(sampling or {}), **({"user": user} if user else {})}  # user: the session's key

    async def complete(transcript: list[dict[str, Any]], tool_choice: Any) -> dict[str, Any]:
        payload = {"model": model, "messages": transcript, "tools": tools, "tool_choice": tool_choice,
                   "max_tokens": max_tokens, **knobs}  # fmt: skip
        return (await llm.complete(payload, deadline_s=deadline_s)).message

    return complete


class ProductSource(Protocol):
    """Where look-ups find products by catalogue id (a ``Catalogue`` is one)."""

    def get(self, product_id: str) -> Product | None: ...


class RankerToolbox:
    """Executes ``get_products`` and ``search_catalog`` for one request's candidates; answers are JSON text.

    Example:
        >>> toolbox = RankerToolbox(catalogue, candidates)  # doctest: +SKIP
        >>> await toolbox.call("get_products", {"ids": ["A"]})  # doctest: +SKIP
        '[{"id": "A", "product_id": "15970", ...}]'
    """

    def __init__(
        self,
        catalogue: ProductSource,
        candidates: Sequence[Product],
        search: SearchProducts | None = None,
        *,
        max_results: int = 10,
        attribute_values: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.candidates = list(candidates)
        self.candidate_ids = [p.product_id for p in self.candidates]
        self._by_handle = dict(zip(handles(len(self.candidates)), self.candidates, strict=True))
        self._handle_of = {p.product_id: h for h, p in self._by_handle.items()}
        self.search = search
        self.max_results = max_results
        # attribute → lower-cased value → the catalogue's spelling ("navy blue" → "Navy Blue")
        self._values = {name: {v.lower(): v for v in values} for name, values in (attribute_values or {}).items()}

    async def call(self, name: str, arguments: Any) -> str:
        """The tool's answer; a bad call gets an ``error`` the model can read, never an exception."""
        if not isinstance(arguments, dict):
            return json.dumps({"error": "arguments must be a JSON object"})
        if name == "get_products":
            return self._get_products(arguments.get("ids"))
        if name == "search_catalog":
            return await self._search(arguments)
        return json.dumps({"error": f"unknown tool {name!r}"})

    def _get_products(self, ids: Any) -> str:
        if not isinstance(ids, list) or not ids:
            return json.dumps({"error": "ids must be a non-empty list"})
        answer: list[dict[str, Any]] = []
        for raw in ids[:26]:
            key = str(raw).strip()
            product = self._by_handle.get(key.upper()) or self.catalogue.get(key)
            if product is None:
                answer.append({"id": key, "error": "no such candidate or product"})
            else:
                answer.append(describe_product(product, self._handle_of.get(product.product_id)))
        return json.dumps(answer, ensure_ascii=False)

    async def _search(self, arguments: dict[str, Any]) -> str:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            return json.dumps({"error": "query must be a non-empty string"})
        if self.search is None:
            return json.dumps({"error": "search is not available here; rank the candidates given"})
        search_filter = self._filter(arguments.get("category"), arguments.get("attributes"))
        if isinstance(search_filter, str):
            return json.dumps({"error": search_filter})
        try:
            found = await self.search(query.strip(), self.max_results, search_filter)
        except Exception as exc:  # the model reads the failure and may still rank the candidates it has
            return json.dumps({"error": f"search failed: {type(exc).__name__}"})
        return json.dumps([describe_product(p, self._handle_of.get(p.product_id)) for p in found], ensure_ascii=False)

    def _filter(self, category: Any, attributes: Any) -> SearchFilter | str | None:
        """The search filter of a ``search_catalog`` call, or what is wrong with it."""
        prefix = None
        if category not in (None, ""):
            if not isinstance(category, str):
                return "category must be a string such as 'Apparel > Topwear'"
            prefix = [part.strip() for part in category.split(CATEGORY_SEPARATOR.strip()) if part.strip()]
        wanted: dict[str, list[str]] = {}
        if attributes not in (None, {}):
            if not isinstance(attributes, dict):
                return 'attributes must be an object such as {"base_colour": "Red"}'
            for name, raw in attributes.items():
                values = raw if isinstance(raw, list) else [raw]
                known = self._values.get(str(name))
                if self._values and known is None:
                    return f"unknown attribute {name!r}; known: {', '.join(sorted(self._values))}"
                wanted[str(name)] = [known.get(str(v).lower(), str(v)) if known else str(v) for v in values]
        if not prefix and not wanted:
            return None
        return SearchFilter(category_prefix=prefix, attributes=wanted)


@dataclass(frozen=True)
class RankerOutcome:
    """What the ranker submitted (catalogue ids, or None without a valid ``submit_ranking``) and how."""

    ids: list[str] | None
    tool_calls: list[str] = field(default_factory=list)
    raw: str = ""


def _arguments(call: dict[str, Any]) -> Any:
    raw = call.get("function", {}).get("arguments")
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return None
    return raw


async def run_ranker(
    complete: Complete, messages: list[dict[str, Any]], toolbox: RankerToolbox, *, max_rounds: int = 3
) -> RankerOutcome:
    """Call the model, run its tools, and return its ``submit_ranking`` ids resolved to catalogue ids.

    Look-ups are bounded: the last round names ``submit_ranking``, so a model that keeps looking
    (a zero-shot base does) still ranks, under guided decoding, instead of running out of rounds.
    """
    transcript = list(messages)
    made: list[str] = []
    raw = ""
    for round_ in range(max_rounds):
        message = await complete(transcript, SUBMIT_CHOICE if round_ == max_rounds - 1 else "required")
        calls = message.get("tool_calls") or []
        raw = str(message.get("content") or "")
        if not calls:
            break
        for call in calls:
            name = str(call.get("function", {}).get("name", ""))
            made.append(name)
            if name == "submit_ranking":
                args = _arguments(call)
                ids = args.get("ids") if isinstance(args, dict) else None
                if isinstance(ids, list):
                    return RankerOutcome(resolve_ids(ids, toolbox.candidate_ids), made, json.dumps(args))
                return RankerOutcome(None, made, str(call.get("function", {}).get("arguments", "")))
        transcript.append({"role": "assistant", "content": message.get("content") or "", "tool_calls": calls})
        for call in calls:
            name = str(call.get("function", {}).get("name", ""))
            transcript.append({"role": "tool", "tool_call_id": call.get("id", ""), "name": name,
                               "content": await toolbox.call(name, _arguments(call))})  # fmt: skip
    return RankerOutcome(None, made, raw)
