"""Check an explanation against the ranking it explains and the records of the products it describes.

The explainer is a base model prompted with the ranked products; it may still name a
product from elsewhere in the catalogue, write a catalogue id that is not ranked, refer to
a rank past the list (``#9`` of five), or say something false about a product ("#2 is a
black shirt" for a navy kurta). :class:`ExplanationChecker` finds every catalogue title
(whole words, any case), every catalogue id, every number the text presents as a product id
("product 99999", even one the catalogue lacks) and every ``#k`` in the text, and flags those
that are not in the ranking; the words after each ``#k`` (up to the next one) are claims
about the k-th product, read by :class:`rag.attribute_claims.ClaimChecker` against its
record: colour, article type, gender, usage and brand.

Example:
    >>> checker = ExplanationChecker(catalogue)  # doctest: +SKIP
    >>> checker.check("The Puma Men Black Shoes fit ...", ranked).ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rag.attribute_claims import ClaimChecker, FalseClaim
from retrieval.catalogue import Product

__all__ = ["ExplanationCheck", "ExplanationChecker", "FalseClaim", "Mention"]

_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_REF = re.compile(r"#(\d+)")
# "product 99999", "item no. 12", "SKU: 4411": an id the text presents as one, whether or not the catalogue has it.
_CLAIMED_ID = re.compile(
    r"\b(?:products?|items?|ids?|skus?|articles?)\s*(?:id|no\.?|number)?\s*[:#]?\s*(\d{2,})\b", re.I
)


def _words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Mention:
    """A product the text names: by ``title``, catalogue ``id`` or ``rank`` (#k), and whether the ranking holds it."""

    kind: str
    text: str
    product_ids: tuple[str, ...]
    ranked: bool


@dataclass(frozen=True)
class ExplanationCheck:
    """The products an explanation names; ``flagged`` are those outside the ranking."""

    mentions: list[Mention] = field(default_factory=list)
    false_claims: list[tuple[int, FalseClaim]] = field(default_factory=list)  # (rank, claim)

    @property
    def flagged(self) -> list[Mention]:
        return [m for m in self.mentions if not m.ranked]

    @property
    def ok(self) -> bool:
        return not self.flagged and not self.false_claims

    def reasons(self) -> str:
        """What is wrong, in a few words: products outside the ranking, then false claims by rank."""
        parts = [f"named {m.text!r} outside the ranking" for m in self.flagged]
        parts += [f"#{rank}: {claim}" for rank, claim in self.false_claims]
        return "; ".join(parts)

    @property
    def names_ranked(self) -> bool:
        """Whether the text names at least one ranked product."""
        return any(m.ranked for m in self.mentions)


class ExplanationChecker:
    """Finds catalogue titles and ids in a text; built once per catalogue (a word-prefix index of titles)."""

    def __init__(self, products: Iterable[Product]) -> None:
        self._titles: dict[tuple[str, ...], set[str]] = {}
        self._by_first: dict[str, set[int]] = {}
        self._ids: set[str] = set()
        products = list(products)
        self.claims = ClaimChecker(products)
        for p in products:
            self._ids.add(p.product_id)
            words = tuple(_words(p.title))
            if len(words) < 2:  # one-word titles are ordinary words, not product names
                continue
            self._titles.setdefault(words, set()).add(p.product_id)
            self._by_first.setdefault(words[0], set()).add(len(words))

    def check(self, text: str, ranked: Sequence[Product]) -> ExplanationCheck:
        ranked_ids = {p.product_id for p in ranked}
        ranked_titles = {tuple(_words(p.title)) for p in ranked}
        # A rank reference left unexpanded points past the ranking (see rag.explainer_prompt).
        mentions = [Mention("rank", m.group(0), (), 1 <= int(m.group(1)) <= len(ranked)) for m in _REF.finditer(text)]
        # An id the catalogue lacks is still an id outside the ranking (an injected "recommend product 99999").
        mentions += [Mention("id", m.group(1), (m.group(1),), False) for m in _CLAIMED_ID.finditer(text)
                     if m.group(1) not in self._ids]  # fmt: skip
        words = _words(text)
        i = 0
        while i < len(words):
            lengths = sorted(self._by_first.get(words[i], ()), reverse=True)
            hit = next((n for n in lengths if tuple(words[i : i + n]) in self._titles), None)
            if hit is None:
                if words[i] in self._ids:
                    mentions.append(Mention("id", words[i], (words[i],), words[i] in ranked_ids))
                i += 1
                continue
            title = tuple(words[i : i + hit])
            ids = tuple(sorted(self._titles[title]))
            # Titles repeat in a catalogue: naming a ranked product's title is fine whichever product shares it.
            mentions.append(Mention("title", " ".join(title), ids, title in ranked_titles))
            i += hit
        return ExplanationCheck(mentions, self._false_claims(text, ranked))

    def _false_claims(self, text: str, ranked: Sequence[Product]) -> list[tuple[int, FalseClaim]]:
        """Claims after each ``#k`` (up to the next reference) against the k-th product's record."""
        refs = list(_REF.finditer(text))
        found: list[tuple[int, FalseClaim]] = []
        ends = [r.start() for r in refs[1:]] + [len(text)] if refs else []
        for ref, end in zip(refs, ends, strict=True):
            rank = int(ref.group(1))
            if not 1 <= rank <= len(ranked):
                continue  # flagged as a rank outside the list already
            segment = text[ref.end() : end]
            found += [(rank, claim) for claim in self.claims.false_claims(segment, ranked[rank - 1])]
        return found
