"""The ranker's reading warm-up: SYNTHETIC requests that exactly one candidate line matches.

A small base model does not find, zero-shot, the candidate line that matches a request: asked
for "red kurtas" among twenty lines of which one reads ``kurtas | red | …``, SmolLM2-135M puts
its first id on ``A`` whatever the lines say (measured: the matching line's mean rank 9.4 of 20,
as chance). Distillation on real buyers alone then sits at the loss of a uniform choice: the
teacher's posterior spreads over several candidates that fit the words, and a model that does
not read the lines at all has no gradient that points at reading them.

So training starts with a short lesson that has one right answer: the request names an article
type and a colour, one candidate has both, the others differ in type (or, in half of the
lessons, five share the type but not the colour). The first id slot's target is that
candidate; the later slots are in no loss (:func:`finetune.distill_ranker.lesson_example`), so
the lesson teaches reading the lines and no order among the others. These requests are
**SYNTHETIC**, drawn from the real catalogue; the buyer is a fixed placeholder without orders.

Example:
    >>> lesson = reading_lesson(catalogue, random.Random(0))  # doctest: +SKIP
    >>> lesson.candidates[lesson.answer].category[-1].lower() in lesson.request  # doctest: +SKIP
    True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.catalogue import Catalogue, Product

__all__ = ["ReadingLesson", "reading_lesson", "reading_types"]

PROFILE = "department store in Western Europe, customers aged 25-34, gender not stated"
_MIN_PER_TYPE = 50  # article types this common have enough colours and products to draw from
_SAME_TYPE = 5  # distractors that share the article type in a harder lesson


@dataclass(frozen=True)
class ReadingLesson:
    """A request, the candidates in the order shown, and the index of the one that matches it."""

    request: str
    candidates: tuple[Product, ...]
    answer: int
    profile: str = PROFILE


def reading_types(catalogue: Catalogue, *, min_products: int = _MIN_PER_TYPE) -> dict[str, list[Product]]:
    """The catalogue's common article types (last category level) and their products with a colour."""
    by_type: dict[str, list[Product]] = {}
    for product in catalogue.products:
        if product.attributes.get("base_colour"):
            by_type.setdefault(product.category[-1], []).append(product)
    return {kind: products for kind, products in by_type.items() if len(products) >= min_products}


def _distractors(
    by_type: dict[str, list[Product]], kind: str, colour: str, n: int, rng: random.Random, same_type: int
) -> list[Product]:
    same = [p for p in by_type[kind] if p.attributes.get("base_colour") != colour]
    chosen = rng.sample(same, min(same_type, len(same)))
    others = rng.sample([k for k in by_type if k != kind], n - len(chosen))
    return chosen + [rng.choice(by_type[k]) for k in others]


def reading_lesson(
    catalogue: Catalogue,
    rng: random.Random,
    *,
    n_candidates: int = 20,
    by_type: dict[str, list[Product]] | None = None,
) -> ReadingLesson:
    """One lesson: "<colour> <article type>" and ``n_candidates`` lines of which exactly one has both."""
    types = by_type if by_type is not None else reading_types(catalogue)
    if len(types) < n_candidates:
        raise ValueError(f"a reading lesson needs {n_candidates} common article types, the catalogue has {len(types)}")
    kind = rng.choice(sorted(types))
    target = rng.choice(types[kind])
    colour = target.attributes["base_colour"]
    same_type = _SAME_TYPE if rng.random() < 0.5 else 0
    shown: Sequence[Product] = _distractors(types, kind, colour, n_candidates - 1, rng, same_type)
    answer = rng.randrange(n_candidates)
    candidates = [*shown[:answer], target, *shown[answer:]]
    return ReadingLesson(f"{colour.lower()} {kind.lower()}", tuple(candidates), answer)
