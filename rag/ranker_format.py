"""How the ranker sees a request: candidate ids, candidate and history lines, look-up answers.

Training (``finetune/``) and serving (the RAG pipeline) share these functions, so a LoRA
ranker is served the exact format it was trained on.

Candidates carry short **candidate ids** (``A``, ``B``, … in retrieval order), as LlamaRec's
index letters and RankGPT's ``[1]…[N]`` do: a one-token id is what a small model copies
reliably and keeps the prompt short; :func:`resolve_ids` maps an answer back to catalogue
ids, and an id outside the list stays as it was, so validation counts it as hallucinated.

Example:
    >>> from retrieval.catalogue import Product
    >>> shirt = Product("15970", "Turtle Men Navy Blue Shirt", ("Apparel", "Topwear", "Shirts"),
    ...                 {"base_colour": "Navy Blue", "usage": "Casual"}, None)
    >>> candidate_line("A", shirt)
    'shirts | navy blue | casual | men [A]'
    >>> resolve_ids(["a", "Q"], ["15970"])
    ['15970', 'Q']
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prompts import load_prompt, load_tools
from retrieval.catalogue import Product

__all__ = [
    "HANDLES",
    "PHOTO_NOTE",
    "RankerPrompt",
    "candidate_line",
    "describe_product",
    "handles",
    "history_line",
    "product_brand",
    "product_gender",
    "product_line",
    "ranker_prompt",
    "ranker_request_line",
    "ranker_system_message",
    "ranker_tools",
    "ranker_user_message",
    "resolve_ids",
]

HANDLES = string.ascii_uppercase  # the most candidates one ranking request can carry
PHOTO_NOTE = " [photo of a similar product attached]"  # appended to the request when the buyer sent a photo
_GENDER_WORD = re.compile(r"\b(Men|Women|Boys|Girls|Unisex|Kids)\b")


_GENDER_TOKENS = {"Men", "Women", "Boys", "Girls", "Unisex", "Kids", "Men's", "Women's", "Boy's", "Girl's", "Kid's"}


def product_brand(title: str) -> str:
    """The brand: the words before the title's gender word (``Peter England Men …``), else the first word.

    The catalogue has no brand column; its titles start with the brand, then (mostly) the gender.
    """
    words = title.split()
    for i, word in enumerate(words[:5]):
        if i and word in _GENDER_TOKENS:
            return " ".join(words[:i])
    return words[0] if words else ""


def product_gender(title: str) -> str | None:
    """The gender a title names (``Kids`` counts for boys and girls), or None: the catalogue has no gender column."""
    match = _GENDER_WORD.search(title)
    return match.group(1) if match else None


def _facets(product: Product, *, lower: bool = False) -> str:
    gender = product_gender(product.title) or "Unisex"
    colour = product.attributes.get("base_colour", "") or "-"
    usage = product.attributes.get("usage", "") or "-"
    text = f"{product.category[-1]} | {colour} | {usage} | {gender}"
    return text.lower() if lower else text


def product_line(product: Product) -> str:
    """A product as the explainer sees it: catalogue id, title and attributes."""
    return f"[{product.product_id}] {product.title} | {_facets(product)}"


# The ranker's facets are lower-cased like the request's key terms: "shirts" in the request and in a
# candidate line are then the same token, which is what a small model can match (" Shirts" is another).
# The id comes last: attention is causal, so an id written before its line cannot see the line, and the
# answer must find the matching line, then step back to the id. Written after, the id's own state has read
# the line (and the request above it), and the answer copies it in one step. Measured on the 135M base, a
# LoRA taught "submit the line that matches the request" went from loss 3.0 (chance of 20) to 0.3 in 20
# steps with the id last, and stayed at 3.0 with it first.
def candidate_line(handle: str, product: Product) -> str:
    """A candidate as the ranker sees it: the facets buyers choose by, lower-cased, then its candidate id."""
    return f"{_facets(product, lower=True)} [{handle}]"


def history_line(product: Product) -> str:
    return f"- {_facets(product, lower=True)}"


def handles(n: int) -> str:
    """The candidate ids of a list of ``n`` candidates."""
    if n > len(HANDLES):
        raise ValueError(f"at most {len(HANDLES)} candidates per ranking request, got {n}")
    return HANDLES[:n]


def resolve_ids(ids: Sequence[object], candidates: Sequence[str]) -> list[str]:
    """Candidate ids (``A``, ``B``, …) back to catalogue ids; a candidate's catalogue id is accepted as is."""
    by_handle = dict(zip(handles(len(candidates)), candidates, strict=True))
    return [by_handle.get(str(raw).strip().upper(), str(raw)) for raw in ids]


def describe_product(product: Product, handle: str | None = None) -> dict[str, Any]:
    """What ``get_products`` answers for one product."""
    head = {"id": handle} if handle else {}
    return {**head, "product_id": product.product_id, "title": product.title,
            "category": " > ".join(product.category), **product.attributes}  # fmt: skip


def ranker_tools(n: int, *, at_least: int = 10) -> list[dict[str, Any]]:
    """The ranker's tools for ``n`` candidates: ``submit_ranking`` takes ``min(at_least, n)`` or more of their ids.

    The ``enum`` lets guided decoding (vLLM, the embedded worker) write only ids of this list and
    ``minItems`` a list as long as the one shown; ``uniqueItems`` lets the embedded worker sample
    a ranking without repeats (vLLM and ollama ignore it; the ranker drops repeats anyway).
    """
    ids = list(handles(n))
    tools = load_tools()
    for tool in tools:
        if tool["function"]["name"] == "submit_ranking":
            schema = tool["function"]["parameters"]["properties"]["ids"]
            schema["items"] = {"type": "string", "enum": ids}
            schema["minItems"] = min(at_least, n)
            schema["uniqueItems"] = True
    return tools


def ranker_system_message() -> dict[str, Any]:
    return {"role": "system", "content": load_prompt("ranker_system")}


def ranker_user_message(
    profile: str,
    history: Sequence[Product],
    request: str,
    candidates: Sequence[Product],
    interests: Sequence[str] = (),
) -> str:
    """The ranker's user turn: the buyer, recent orders, the request, and the candidates with their ids.

    A buyer with no orders yet may come with ``interests`` (cold start's topics) in their place.
    """
    if history:
        orders = "\n".join(history_line(p) for p in history)
    elif interests:
        orders = load_prompt("ranker_no_orders_interests").format(interests=", ".join(interests))
    else:
        orders = load_prompt("ranker_no_orders")
    return load_prompt("ranker_user").format(
        profile=profile,
        history=orders,
        request=request,
        candidates="\n".join(candidate_line(h, p) for h, p in zip(handles(len(candidates)), candidates, strict=True)),
    )


def ranker_request_line(text: str | None, has_photo: bool) -> str:
    """The request as the ranker reads it: the buyer's words, and a note when a photo came with them."""
    return (text or "products like the photo") + (PHOTO_NOTE if has_photo else "")


@dataclass(frozen=True)
class RankerPrompt:
    """The ranker's opening messages and the tools it may call, for one request."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]


def ranker_prompt(
    profile: str,
    history: Sequence[Product],
    request: str,
    candidates: Sequence[Product],
    *,
    interests: Sequence[str] = (),
    at_least: int = 10,
) -> RankerPrompt:
    """The one ranker request: serving (the pipeline), training data (``finetune``) and eval all build it here.

    ``request`` is :func:`ranker_request_line`'s wording; ``at_least`` is how many ids
    ``submit_ranking`` must carry (the list shown, or fewer when there are fewer candidates).
    """
    user = ranker_user_message(profile, history, request, candidates, interests)
    return RankerPrompt(
        messages=[ranker_system_message(), {"role": "user", "content": user}],
        tools=ranker_tools(len(candidates), at_least=at_least),
    )
