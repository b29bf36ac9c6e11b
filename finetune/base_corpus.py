"""The training text of Tandem's small base model, generated from the real catalogue (offline, seeded).

A real base model (Qwen2.5-Instruct, say) arrives knowing language, chat and tool calling;
Tandem's own small one learns just enough of each here, from four kinds of documents:

1. **product descriptions**: every product's title, category path, colour and usage in prose;
2. **search conversations** in the chat template with tools: a buyer's request, a
   ``search_catalog`` call in the Hermes ``<tool_call>`` format, the tool's answer (products
   that match the request's category and colour), and a short answer citing their attributes;
3. **explanations** in the explainer's prompt format: a request and a ranking in, two or three
   sentences out that refer to ranked products by rank (``#1``; Tandem writes the titles in),
   with their attributes;
4. **generic rankings** in the ranker's prompt format: candidates in, one ``submit_ranking``
   call out, ordered by how many request words a candidate matches (ties keep the listed
   order). This is the "zero-shot" skill a general model brings; what buyers' profiles and
   histories add is left for the LoRA ranker to learn.

All conversations are SYNTHETIC text over real products.

Example:
    >>> docs = build_corpus(catalogue, CorpusConfig(n_search=10, n_explain=10, n_rank=5))  # doctest: +SKIP
    >>> docs[0]  # doctest: +SKIP
    'Mother Earth Women Aug Bagru Red Kurtas is a red kurtas from Apparel > Topwear > Kurtas, made for ethnic wear.'
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from finetune.buyers import AGE_BANDS, BUSINESS_TYPES, GENDERS, REGIONS, BuyerProfile
from finetune.ranking_data import request_match_scores
from prompts import load_prompt, load_tools
from rag.explainer_prompt import explainer_messages
from rag.ranker_format import handles, product_gender, ranker_tools, ranker_user_message
from retrieval.catalogue import Catalogue, Product

__all__ = ["CorpusConfig", "build_corpus", "explanation", "request_for", "request_match_ranking"]

Render = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], str]


@dataclass(frozen=True)
class CorpusConfig:
    """How many documents of each kind, and the seed."""

    # Copying ids and titles from the prompt is the skill a small model lacks most, so rankings and
    # explanations get most of the budget and product prose only a sample.
    n_products: int | None = 8000  # None: every product once
    n_search: int = 2000
    n_explain: int = 4000
    n_rank: int = 5000
    n_candidates: int = 20  # the most; each ranking document draws 6 to this many
    seed: int = 0


def _attrs(p: Product) -> tuple[str, str, str]:
    return p.category[-1].lower(), p.attributes.get("base_colour", "").lower(), p.attributes.get("usage", "").lower()


def describe(p: Product) -> str:
    kind, colour, usage = _attrs(p)
    return f"{p.title} is a {colour} {kind} from {' > '.join(p.category)}, made for {usage} wear."


def request_for(p: Product, rng: random.Random) -> str:
    """A buyer-style request for products like ``p`` (the same shape as the synthetic buyers' queries)."""
    kind, colour, usage = _attrs(p)
    words = ([colour] if colour and rng.random() < 0.65 else []) + [kind]
    gender = product_gender(p.title)
    if gender in {"Men", "Women", "Boys", "Girls"} and rng.random() < 0.5:
        words.append(f"for {gender.lower()}")
    if usage and rng.random() < 0.3:
        words.append(usage)
    lead = rng.choice(["", "", "need ", "looking for ", "wholesale ", "bulk order: "])
    return lead + " ".join(words)


_OPENERS = [
    "For {request}, {first}.",
    "{first_cap}, which fits {request}.",
    "Good matches for {request}: {first}.",
]
_FOLLOW = [
    "#{rank} adds a {colour} option for {usage} wear",
    "#{rank} is a {colour} {kind} as well",
    "#{rank} is another {usage} choice in {colour}",
]


def _mention(rank: int, p: Product) -> str:
    kind, colour, usage = _attrs(p)
    return f"#{rank} is a {colour} {kind} for {usage} wear"


def explanation(request: str, ranked: Sequence[Product], rng: random.Random) -> str:
    """Two or three sentences about ``ranked`` products, referred to by rank (#1, #2, …), citing their attributes."""
    first = _mention(1, ranked[0])
    text = rng.choice(_OPENERS).format(request=request, first=first, first_cap=first)
    for rank, p in enumerate(ranked[1 : 1 + rng.randint(1, 2)], 2):
        kind, colour, usage = _attrs(p)
        text += " " + rng.choice(_FOLLOW).format(rank=rank, colour=colour, usage=usage, kind=kind) + "."
    return text


def request_match_ranking(request: str, candidates: Sequence[Product]) -> list[str]:
    """Candidate ids (``A``, ``B``, …) by how many request words their line matches; ties keep the listed order."""
    scores = request_match_scores(request, candidates)
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
    return [handles(len(candidates))[i] for i in order]


class _Pools:
    def __init__(self, products: Sequence[Product]) -> None:
        self.products = list(products)
        self.by_kind: dict[tuple[str, ...], list[Product]] = {}
        for p in self.products:
            self.by_kind.setdefault(p.category, []).append(p)

    def like(self, p: Product, n: int, rng: random.Random) -> list[Product]:
        """Up to ``n`` products of ``p``'s category, same colour first (what a search for it returns)."""
        same = self.by_kind[p.category]
        colour = p.attributes.get("base_colour")
        first = [q for q in same if q.attributes.get("base_colour") == colour]
        rest = [q for q in same if q.attributes.get("base_colour") != colour]
        rng.shuffle(first)
        rng.shuffle(rest)
        return (first + rest)[:n]


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _facts(p: Product) -> dict[str, str]:
    return {"id": p.product_id, "title": p.title, "category": " > ".join(p.category), **p.attributes}


def _random_profile(rng: random.Random) -> BuyerProfile:
    gender = rng.choice(GENDERS) if rng.random() < 0.7 else None
    business, region = rng.choice(list(BUSINESS_TYPES)), rng.choice(list(REGIONS))
    return BuyerProfile(business, region, rng.choice(list(AGE_BANDS)), gender)


def build_corpus(catalogue: Catalogue, config: CorpusConfig, render: Render) -> list[str]:
    """Documents as text; conversations are rendered with ``render(messages, tools)`` (the chat template)."""
    rng = random.Random(config.seed)
    pools = _Pools(catalogue.products)
    products = pools.products
    tools = load_tools()
    search_tools = [t for t in tools if t["function"]["name"] != "submit_ranking"]
    docs: list[str] = []

    described = products if config.n_products is None else rng.sample(products, min(config.n_products, len(products)))
    docs += [describe(p) for p in described]

    for _ in range(config.n_search):
        seed = rng.choice(products)
        request = request_for(seed, rng)
        found = pools.like(seed, rng.randint(3, 5), rng)
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": request},
            {"role": "assistant", "content": "", "tool_calls": [_call("search_catalog", {"query": request})]},
            {"role": "tool", "name": "search_catalog", "content": json.dumps([_facts(p) for p in found])},
            {"role": "assistant", "content": explanation(request, found, rng)},
        ]
        docs.append(render(messages, search_tools))

    for _ in range(config.n_explain):
        seed = rng.choice(products)
        request = request_for(seed, rng)
        ranked = pools.like(seed, rng.randint(3, 6), rng)
        messages = [
            *explainer_messages(request, ranked),
            {"role": "assistant", "content": explanation(request, ranked, rng)},
        ]
        docs.append(render(messages, None))

    for _ in range(config.n_rank):
        seed = rng.choice(products)
        request = request_for(seed, rng)
        n = rng.randint(min(6, config.n_candidates), config.n_candidates)
        near = pools.like(seed, n // 2, rng)
        others = rng.sample(products, n - len(near))
        candidates = near + others
        rng.shuffle(candidates)
        history = rng.sample(products, rng.randint(3, 6))
        user = ranker_user_message(_random_profile(rng).describe(), history, request, candidates)
        ranking = request_match_ranking(request, candidates)[:10]
        messages = [
            {"role": "system", "content": load_prompt("ranker_system")},
            {"role": "user", "content": user},
            {"role": "assistant", "content": "", "tool_calls": [_call("submit_ranking", {"ids": ranking})]},
        ]
        docs.append(render(messages, ranker_tools(len(candidates))))

    rng.shuffle(docs)
    return docs
