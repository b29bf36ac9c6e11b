"""Attribute claims in an explanation, set against the catalogue record of the product they describe.

A small explainer copies the facts it is given, mostly: sometimes it writes "a blue shirt"
for a kurta or borrows the brand of its example. :class:`ClaimChecker` reads the words a
text says about one product and compares five kinds of claim with that product's record:

- **colour**: a catalogue colour ("navy blue", "off white"); a part of the record's colour
  ("blue" of "navy blue") is true;
- **article type**: a category name of the catalogue ("shirts", "casual shoes", singular or
  plural); true when all its words are in the record's category path;
- **gender**: men, women, boys, girls, kids, unisex; a unisex product is for men and women,
  kids' products for boys and girls;
- **usage**: casual, formal, sports, ethnic, party, smart casual, …;
- **brand**: the name after "by" or "from", against the title's words before its gender word
  (:func:`rag.ranker_format.product_brand`: "Peter England" of "Peter England Men …"); a
  shortened brand ("by Peter") is not false.

Longer phrases match first ("casual shoes" is an article type before "casual" is a usage),
and a brand's words are not read again as colours ("by Red Tape"). Words outside these
vocabularies are not claims: praise is not checked, only facts the record can contradict.

Example:
    >>> kurta = Product("1", "Biba Women Blue Kurta", ("Apparel", "Topwear", "Kurtas"),
    ...                 {"base_colour": "Blue", "usage": "Ethnic"}, None)
    >>> shirt = Product("2", "Puma Men Black Shirt", ("Apparel", "Topwear", "Shirts"),
    ...                 {"base_colour": "Black", "usage": "Casual"}, None)
    >>> checker = ClaimChecker([kurta, shirt])
    >>> [c.kind for c in checker.false_claims("a blue kurta for women by Biba, for ethnic wear", kurta)]
    []
    >>> [(c.kind, c.claimed) for c in checker.false_claims("a black shirt for men by Puma", kurta)]
    [('brand', 'Puma'), ('colour', 'black'), ('article type', 'shirt'), ('gender', 'men')]
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from rag.ranker_format import product_brand, product_gender
from retrieval.catalogue import Product

__all__ = ["ClaimChecker", "FalseClaim", "singular"]

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
# Up to four capitalised words after "by"/"from": "by Peter England", "by Red Tape Men".
_BRAND = re.compile(r"\b(?:by|from)\s+([A-Z0-9][\w'&.-]*(?:\s+[A-Z0-9][\w'&.-]*){0,3})")
_GENDER_WORDS = {"men": "men", "man": "men", "mens": "men", "men's": "men", "women": "women", "woman": "women",
                 "womens": "women", "women's": "women", "ladies": "women", "boys": "boys", "boy": "boys",
                 "boys'": "boys", "girls": "girls", "girl": "girls", "kids": "kids", "kid": "kids",
                 "children": "kids", "unisex": "unisex"}  # fmt: skip
_FITS = {"Men": {"men"}, "Women": {"women"}, "Boys": {"boys", "kids"}, "Girls": {"girls", "kids"},
         "Kids": {"kids", "boys", "girls"}, "Unisex": {"unisex", "men", "women"}}  # fmt: skip


def singular(word: str) -> str:
    """A crude singular, the same on both sides of a comparison: shirts→shirt, watches→watch, dress→dress.

    Example:
        >>> [singular(w) for w in ("shirts", "watches", "shoes", "dresses", "dress", "jeans")]
        ['shirt', 'watch', 'shoe', 'dress', 'dress', 'jean']
    """
    if word.endswith("es") and word[:-2].endswith(("sh", "ch", "ss", "x")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def _norm(text: str) -> tuple[str, ...]:
    return tuple(singular(w) for w in _WORD.findall(text.lower()) if w != "and")


@dataclass(frozen=True)
class FalseClaim:
    """A claim the record contradicts: its kind, what the text said, and what the record holds."""

    kind: str
    claimed: str
    record: str

    def __str__(self) -> str:
        return f"{self.kind} {self.claimed!r} (record: {self.record or 'none'})"


class ClaimChecker:
    """The catalogue's colour, article-type and usage vocabularies; built once per catalogue."""

    def __init__(self, products: Iterable[Product]) -> None:
        phrases: dict[tuple[str, ...], str] = {}
        for p in products:
            for name in p.category:
                phrases.setdefault(_norm(name), "article type")
            colour = p.attributes.get("base_colour", "")
            if colour:
                phrases[_norm(colour)] = "colour"  # a colour is a colour even where a category shares its name
            usage = p.attributes.get("usage", "")
            if usage:
                phrases.setdefault(_norm(usage), "usage")
        phrases.pop((), None)
        self._phrases = phrases
        self._longest = max((len(k) for k in phrases), default=1)

    def false_claims(self, text: str, product: Product) -> list[FalseClaim]:
        """Every claim in ``text`` (all of it about ``product``) that the product's record contradicts."""
        found: list[FalseClaim] = []
        brand = product_brand(product.title)
        brand_words: set[str] = set()
        for match in _BRAND.finditer(text):
            claimed = match.group(1).rstrip(".,;")
            if (words := _brand_claim(claimed, brand)) is None:
                found.append(FalseClaim("brand", claimed, brand))
                brand_words.update(_WORD.findall(claimed.lower()))
            else:  # the words after the brand ("by Red Tape Men") are read as claims of their own
                brand_words.update(words)
        words = [w for w in _WORD.findall(text.lower()) if w not in brand_words]
        path_words = {w for name in product.category for w in _norm(name)}
        colour = _norm(product.attributes.get("base_colour", ""))
        usage = _norm(product.attributes.get("usage", ""))
        fits = _FITS.get(product_gender(product.title) or "Unisex", set())
        i = 0
        while i < len(words):
            if words[i] in _GENDER_WORDS:
                if _GENDER_WORDS[words[i]] not in fits:
                    found.append(FalseClaim("gender", words[i], product_gender(product.title) or "Unisex"))
                i += 1
                continue
            hit = self._match(words, i)
            if hit is None:
                i += 1
                continue
            phrase, kind, length = hit
            wrong = (
                (kind == "colour" and not set(phrase) <= set(colour))
                or (kind == "article type" and not set(phrase) <= path_words)
                or (kind == "usage" and phrase != usage)
            )
            if wrong:
                record = {"colour": product.attributes.get("base_colour", ""), "usage": product.attributes.get(
                    "usage", "")}.get(kind, " > ".join(product.category))  # fmt: skip
                found.append(FalseClaim(kind, " ".join(words[i : i + length]), record))
            i += length
        return found

    def _match(self, words: list[str], i: int) -> tuple[tuple[str, ...], str, int] | None:
        for length in range(min(self._longest, len(words) - i), 0, -1):
            phrase = tuple(singular(w) for w in words[i : i + length])
            kind = self._phrases.get(phrase)
            if kind is not None:
                return phrase, kind, length
        return None


def _brand_claim(claimed: str, brand: str) -> list[str] | None:
    """The brand's words in a claim that names the brand, or None for another brand.

    A claim that starts with the brand, or is the start of it ("by Peter" for Peter England: short, not
    false), names it; words are compared without punctuation ("U.S" is "U.S.").
    """
    said, real = _WORD.findall(claimed.lower()), _WORD.findall(brand.lower())
    if not said or not real:
        return None
    if said[: len(real)] == real:
        return real
    if real[: len(said)] == said:
        return said
    return None
