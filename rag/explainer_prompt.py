"""The explainer's prompt: one short sentence per ranked product, written from that product's facts.

A 135M-parameter instruct model cannot be trusted with five products at once: asked to
explain a list it mixes their facts up or loops. Tandem therefore asks for one sentence per
product, each from a prompt a small model can follow (:func:`explainer_messages`): a system
line, two worked examples as earlier turns, the request and the product's facts as one short
line, and the sentence started for it (``#2 is a``), continued with vLLM's
``continue_final_message`` and stopped at the end of the line. The sentences of a turn are
asked for together (the worker batches them) and shown in rank order, each checked against
its product's record first (:mod:`rag.explanation_check`).

The model refers to a product as ``#k``; :func:`expand_references` writes its title in, so a
model cannot misspell a title or name a product the ranking does not hold by accident.

Example:
    >>> from retrieval.catalogue import Product
    >>> shirt = Product("1", "Turtle Men Navy Shirt", ("Apparel", "Topwear", "Shirts"),
    ...                 {"base_colour": "Navy Blue", "usage": "Formal"}, None)
    >>> product_facts(shirt)
    'navy blue shirts for men, formal wear, brand Turtle'
    >>> expand_references("#1 is a navy shirt; #4 is not ranked.", [shirt])
    '#1 (Turtle Men Navy Shirt) is a navy shirt; #4 is not ranked.'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from prompts import load_json, load_prompt
from rag.ranker_format import product_brand, product_gender
from retrieval.catalogue import Product

__all__ = ["expand_references", "explainer_messages", "product_facts", "record_sentence", "sentence_start"]

_REF = re.compile(r"#(\d+)")


def product_facts(product: Product) -> str:
    """The facts line a small model copies from: colour, article type, gender, usage, brand (lower-cased words).

    The catalogue has no gender column: a title without a gender word gives no gender, rather than a "for
    unisex" the model would copy onto a dress.
    """
    colour = product.attributes.get("base_colour", "").lower()
    gender = product_gender(product.title)
    usage = product.attributes.get("usage", "").lower()
    brand = product_brand(product.title) or "?"
    kind = " ".join(x for x in (colour, product.category[-1].lower()) if x)
    if gender:
        kind += f" for {gender.lower()}"
    return ", ".join(x for x in (kind, f"{usage} wear" if usage else "", f"brand {brand}") if x)


def sentence_start(rank: int) -> str:
    """The words Tandem starts the ``rank``-th sentence with; the model continues them."""
    return load_prompt("explainer_start").format(rank=rank)


def record_sentence(product: Product, rank: int) -> str:
    """The plain sentence built from the record, shown instead of a sentence with a false claim."""
    return f"#{rank}: {product_facts(product)}."


def explainer_messages(request: str, product: Product, rank: int) -> list[dict[str, Any]]:
    """The messages for the sentence about ``product`` at ``rank``, ending in the started assistant sentence."""
    user = load_prompt("explainer_user")
    messages: list[dict[str, Any]] = [{"role": "system", "content": load_prompt("explainer_system")}]
    for example in load_json("explainer_examples"):
        messages.append({"role": "user", "content": user.format(request=example["request"], rank=example["rank"],
                                                                facts=example["facts"])})  # fmt: skip
        messages.append({"role": "assistant", "content": example["sentence"]})
    messages.append({"role": "user", "content": user.format(request=request, rank=rank, facts=product_facts(product))})
    messages.append({"role": "assistant", "content": sentence_start(rank)})
    return messages


def expand_references(text: str, ranked: Sequence[Product]) -> str:
    """``#k`` → ``#k (title of the k-th ranked product)``; a rank outside the list stays (the check flags it)."""

    def name(match: re.Match[str]) -> str:
        k = int(match.group(1))
        return f"{match.group(0)} ({ranked[k - 1].title})" if 1 <= k <= len(ranked) else match.group(0)

    return _REF.sub(name, text)
