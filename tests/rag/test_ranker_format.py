"""The ranker's view of a request: candidate ids and lines, and resolving an answer back to catalogue ids."""

from __future__ import annotations

import pytest

from prompts import load_tools
from rag.ranker_format import candidate_line, handles, product_brand, product_gender, ranker_tools, resolve_ids
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
    assert candidate_line("A", shirt) == "shirts | navy blue | formal | men [A]"  # as the request's terms are
    assert candidate_line("B", scarf) == "stoles | red | - | unisex [B]"  # no gender word, no usage


def test_product_gender_reads_the_title_word_not_a_substring() -> None:
    assert product_gender("Nike Women Running Shoes") == "Women"  # not "Men" inside "Women"
    assert product_gender("Fossil Unisex Watch") == "Unisex"
    assert product_gender("Menthol Soap") is None


@pytest.mark.parametrize(
    ("title", "brand"),
    [
        ("Peter England Men Party Blue Jeans", "Peter England"),
        ("Chhota Bheem Kids Boys Rust Tshirt", "Chhota Bheem"),
        ("Puma Men's 917 Mid Black Shoe", "Puma"),
        ("United Colors of Benetton Women Red Top", "United Colors of Benetton"),
        ("Proline Brown Polo T-Shirt", "Proline"),  # no gender word: the first word
        ("Fabindia Cotton Silk Blend Kurta for Women", "Fabindia"),  # the gender word too far in to end a brand
        ("", ""),
    ],
)
def test_the_brand_is_the_words_before_the_gender(title: str, brand: str) -> None:
    assert product_brand(title) == brand
    assert handles(3) == "ABC"


@pytest.mark.parametrize(("n", "at_least", "min_items"), [(20, 10, 10), (6, 10, 6), (26, 15, 15)])
def test_ranker_tools_let_submit_ranking_take_only_listed_ids_once_each(n: int, at_least: int, min_items: int) -> None:
    tools = ranker_tools(n, at_least=at_least)
    by_name = {t["function"]["name"]: t for t in tools}
    ids = by_name["submit_ranking"]["function"]["parameters"]["properties"]["ids"]
    assert ids["items"] == {"type": "string", "enum": list(handles(n))}
    assert ids["minItems"] == min_items and ids["uniqueItems"] is True
    plain = {t["function"]["name"]: t for t in load_tools()}
    assert by_name["get_products"] == plain["get_products"] and by_name["search_catalog"] == plain["search_catalog"]
    assert "enum" not in str(load_tools())  # a fresh copy each time: the stored schemas are not edited
    with pytest.raises(ValueError, match="at most 26"):
        ranker_tools(27)
