"""Key product terms of a conversation: what the buyer wants, refined turn by turn, instead of the whole chat.

The ranker and the retriever get these few words rather than the transcript (fewer tokens,
and a follow-up such as "in blue" or "not this brand" refines the last request instead of
starting over). Facets come from the catalogue's own values: article types, colours, usages,
and the gender words of titles; brands are the first word of titles.

Example:
    >>> vocab = TermVocabulary(kinds=["Shirts", "Jeans"], colours=["Blue", "Navy Blue"], usages=["Formal"],
    ...                        brands=["Puma"])
    >>> first = vocab.update(None, "need formal navy blue shirts for men")
    >>> first.query()
    'navy blue shirts formal for men'
    >>> vocab.update(first, "in blue, not puma").query(), vocab.update(first, "in blue, not puma").exclude
    ('blue shirts formal for men', ('puma',))
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from retrieval.catalogue import Product

__all__ = ["TermVocabulary", "TurnTerms"]

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_GENDERS = {"men": "men", "man": "men", "mens": "men", "men's": "men", "women": "women", "woman": "women",
            "womens": "women", "women's": "women", "ladies": "women", "boys": "boys", "boy": "boys", "boy's": "boys",
            "girls": "girls", "girl": "girls", "girl's": "girls", "kids": "kids", "kid's": "kids",
            "unisex": "unisex"}  # fmt: skip
_NEGATION = re.compile(r"\b(?:not|no|without|except|other than|but not|exclude)\s+((?:this|that|the)\s+)?([a-z0-9-]+)")
_SAME_BRAND_WORDS = {"brand", "brands", "make", "label"}
_AGAIN = re.compile(r"\b(again|previous ones|same ones|those ones|show them)\b")
_STOP_WORDS = """a an the i we me my our you your for to of in on with and or but please need want looking look find
show some any more less other others like similar also just only ones one them those these this that it its is are be
can could would should do does have has wholesale bulk order orders buy stock supplier suppliers products product items
item get give something price"""
_STOP = frozenset(_STOP_WORDS.split())


@dataclass(frozen=True)
class TurnTerms:
    """The key terms after a turn: facets, other words, exclusions, and whether shown products may repeat."""

    kind: str | None = None
    colour: str | None = None
    usage: str | None = None
    gender: str | None = None
    words: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    repeat_shown: bool = False
    # Brands ruled out ("not this brand"), compared whole: a brand such as "U.S. Polo" is no single title word.
    exclude_brands: tuple[str, ...] = ()

    def query(self) -> str:
        """The words retrieval and the ranker see, facets first."""
        parts = [p for p in (self.colour, self.kind, self.usage) if p]
        parts += list(self.words)
        if self.gender:
            parts.append(f"for {self.gender}")
        return " ".join(parts)

    def excludes(self, product: Product) -> bool:
        """Whether the buyer ruled this product out (an excluded word in its title or facets)."""
        if self.exclude_brands and TermVocabulary.brand_of(product) in self.exclude_brands:
            return True
        haystack = set(_WORD.findall(f"{product.title} {' '.join(product.category)}".lower()))
        return any(word in haystack for word in self.exclude)


@dataclass(frozen=True)
class TermVocabulary:
    """The catalogue's facet values, lower-cased; longest phrases match first ("navy blue" before "blue")."""

    kinds: Iterable[str]
    colours: Iterable[str]
    usages: Iterable[str]
    brands: Iterable[str] = ()
    _kinds: dict[str, str] = field(init=False, repr=False)
    _kind_phrases: list[str] = field(init=False, repr=False)
    _colours: list[str] = field(init=False, repr=False)
    _usages: list[str] = field(init=False, repr=False)
    _brands: set[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        kinds: dict[str, str] = {}
        for kind in self.kinds:
            low = kind.lower()
            kinds[low] = low
            if low.endswith("s") and len(low) > 3:
                kinds[low[:-1]] = low  # "shirt" finds "shirts"
        object.__setattr__(self, "_kinds", kinds)
        # Multi-word types ("track pants", "casual shoes") are read as phrases before single words and usages.
        object.__setattr__(self, "_kind_phrases", sorted((k for k in kinds if " " in k), key=len, reverse=True))
        object.__setattr__(self, "_colours", sorted({c.lower() for c in self.colours if c}, key=len, reverse=True))
        object.__setattr__(self, "_usages", sorted({u.lower() for u in self.usages if u}, key=len, reverse=True))
        object.__setattr__(self, "_brands", {b.lower() for b in self.brands if b})

    @classmethod
    def from_products(cls, products: Iterable[Product]) -> TermVocabulary:
        kinds: set[str] = set()
        colours: set[str] = set()
        usages: set[str] = set()
        brands: set[str] = set()
        for p in products:
            kinds.add(p.category[-1])
            colours.add(p.attributes.get("base_colour", ""))
            usages.add(p.attributes.get("usage", ""))
            if p.title.split():
                brands.add(p.title.split()[0])
        return cls(kinds=sorted(kinds), colours=sorted(colours), usages=sorted(usages), brands=sorted(brands))

    @staticmethod
    def brand_of(product: Product) -> str:
        return (product.title.split() or [""])[0].lower()

    def _phrase(self, text: str, options: list[str]) -> tuple[str | None, str]:
        for option in options:
            pattern = re.compile(rf"\b{re.escape(option)}\b")
            if pattern.search(text):
                return option, pattern.sub(" ", text, count=1)
        return None, text

    def _negated(self, low: str, shown_brand: str | None) -> tuple[list[str], list[str], str]:
        """Exclusions (words, brands) and the text without them; a negated phrase goes whole ("not navy blue")."""
        words: list[str] = []
        brands: list[str] = []
        phrases = [*self._kind_phrases, *self._colours, *self._usages]
        for match in reversed(list(_NEGATION.finditer(low))):
            this, word = match.group(1), match.group(2)
            end = match.end()
            if word in _SAME_BRAND_WORDS:
                if this and shown_brand:
                    brands.append(shown_brand)
            else:
                words.append(self._kinds.get(word, word))
                tail = low[match.start(2) :]
                phrase = next((p for p in phrases if " " in p and re.match(rf"{re.escape(p)}\b", tail)), None)
                if phrase is not None:
                    end = match.start(2) + len(phrase)
            low = low[: match.start()] + " " + low[end:]
        return words[::-1], brands[::-1], low

    def update(self, previous: TurnTerms | None, text: str, *, shown_brand: str | None = None) -> TurnTerms:
        """The terms after this message: a new article type starts over, anything else refines ``previous``."""
        exclude, brands, low = self._negated(text.lower(), shown_brand)
        kind, low = self._phrase(low, self._kind_phrases)
        kind = self._kinds[kind] if kind is not None else None
        colour, low = self._phrase(low, self._colours)
        usage, low = self._phrase(low, self._usages)
        rest: list[str] = []
        gender = None
        for word in _WORD.findall(low):
            if word in _GENDERS:
                gender = _GENDERS[word]
            elif kind is None and word in self._kinds:
                kind = self._kinds[word]
            elif word not in _STOP and word not in self._kinds:
                rest.append(word)
        repeat = bool(_AGAIN.search(text.lower()))
        if previous is None or (kind is not None and kind != previous.kind):
            return TurnTerms(kind, colour, usage, gender, tuple(rest[:6]), tuple(dict.fromkeys(exclude)), repeat,
                             tuple(dict.fromkeys(brands)))  # fmt: skip
        return replace(
            previous,
            colour=colour or previous.colour,
            usage=usage or previous.usage,
            gender=gender or previous.gender,
            words=tuple(dict.fromkeys([*previous.words, *rest]))[-6:],
            exclude=tuple(dict.fromkeys([*previous.exclude, *exclude])),
            repeat_shown=repeat,
            exclude_brands=tuple(dict.fromkeys([*previous.exclude_brands, *brands])),
        )
