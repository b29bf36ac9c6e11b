"""The ranker's view of a request: candidate ids and lines, and resolving an answer back to catalogue ids."""

from __future__ import annotations

import pytest

from rag.ranker_format import candidate_line, handles, product_gender, resolve_ids
from retrieval.catalogue import Product


def _product(pid: str, title: str, kind: str, colour: str = "Black", usage: str = "Casual") -> Product:
    return Product(pid, title, ("Apparel", "Topwear", kind), {"base_colour": colour, "usage": usage}, None)


def test_resolve_ids_maps_candidate_ids_and_keeps_unknown_ones() -> None:
    candidates = ["101", "202", "303"]
    assert resolve_ids(["c", "A", " b "], candidates) == ["303", "101", "202"]
    # Unknown ids stay as they were, so validation counts them as hallucinated.
    assert resolve_ids(["202", "Z", "999"], candidates) == ["202", "Z", "999"]
    with pytest.raises(ValueError, match="at most 26"):
        resolve_ids(["A"], [str(i) for i in range(27)])


def test_candidate_line_shows_the_facets_buyers_choose_by() -> None:
    shirt = _product("1", "Turtle Men Navy Blue Shirt", "Shirts", "Navy Blue", "Formal")
    scarf = _product("2", "Plain Stole", "Stoles", "Red", "")
    assert candidate_line("A", shirt) == "A: shirts | navy blue | formal | men"  # as the request's terms are
    assert candidate_line("B", scarf) == "B: stoles | red | - | unisex"  # no gender word, no usage


def test_product_gender_reads_the_title_word_not_a_substring() -> None:
    assert product_gender("Nike Women Running Shoes") == "Women"  # not "Men" inside "Women"
    assert product_gender("Fossil Unisex Watch") == "Unisex"
    assert product_gender("Menthol Soap") is None
    assert handles(3) == "ABC"
