"""Key product terms: facets found, words kept, exclusions, refinement across turns, checked against hand-worked cases.

Expected values are worked out by hand from the rules in :mod:`rag.terms` (longest phrase first,
a new article type starts over, six words at most, …), plus invariants over the real catalogue.
"""

from __future__ import annotations

import re

import pytest

from rag.terms import TermVocabulary, TurnTerms
from retrieval.catalogue import Catalogue, Product


def product(title: str, *category: str, colour: str = "", usage: str = "") -> Product:
    attributes = {k: v for k, v in (("base_colour", colour), ("usage", usage)) if v}
    return Product("p", title, tuple(category), attributes, None)


@pytest.fixture
def vocab() -> TermVocabulary:
    return TermVocabulary(
        kinds=["Shirts", "Jeans", "Tops", "Abs"],
        colours=["Blue", "Navy Blue", "Red"],
        usages=["Formal", "Casual", "Smart Casual"],
        brands=["Puma", "Nike"],
    )


@pytest.fixture
def first(vocab: TermVocabulary) -> TurnTerms:
    return vocab.update(None, "need formal navy blue shirts for men")


# ------------------------------------------------------------------ one message


def test_a_first_message_yields_its_facets_and_query(first: TurnTerms) -> None:
    assert first == TurnTerms(kind="shirts", colour="navy blue", usage="formal", gender="men")
    assert first.query() == "navy blue shirts formal for men"


@pytest.mark.parametrize(
    ("text", "colour", "usage"),
    [
        ("navy blue jeans", "navy blue", None),  # the longer phrase, not "blue"
        ("blue jeans", "blue", None),
        ("smart casual jeans", None, "smart casual"),
        ("casual jeans", None, "casual"),
        ("bored of jeans", None, None),  # "red" inside a word is not a colour
    ],
)
def test_the_longest_facet_phrase_wins_and_only_whole_words_match(
    vocab: TermVocabulary, text: str, colour: str | None, usage: str | None
) -> None:
    terms = vocab.update(None, text)
    assert (terms.kind, terms.colour, terms.usage) == ("jeans", colour, usage)


@pytest.mark.parametrize(("word", "kind"), [("shirt", "shirts"), ("jean", "jeans"), ("top", "tops"), ("abs", "abs")])
def test_a_singular_finds_the_plural_article_type(vocab: TermVocabulary, word: str, kind: str) -> None:
    assert vocab.update(None, f"a {word} please").kind == kind


def test_short_article_types_get_no_singular(vocab: TermVocabulary) -> None:
    # Only names longer than three letters lose their "s": "ab" is a word, not the type "abs".
    assert vocab.update(None, "ab").kind is None
    assert vocab.update(None, "ab").words == ("ab",)


@pytest.mark.parametrize(
    ("word", "gender"),
    [("men", "men"), ("man", "men"), ("mens", "men"), ("women", "women"), ("ladies", "women"),
     ("womens", "women"), ("boy", "boys"), ("girl", "girls"), ("kids", "kids"), ("unisex", "unisex")],
)  # fmt: skip
def test_gender_words_are_normalised(vocab: TermVocabulary, word: str, gender: str) -> None:
    terms = vocab.update(None, f"tops for {word}")
    assert (terms.gender, terms.words) == (gender, ())
    assert terms.query() == f"tops for {gender}"


def test_stop_words_go_and_the_first_six_other_words_stay_in_order(vocab: TermVocabulary) -> None:
    terms = vocab.update(None, "please show me some slim fit stretch cotton linen blend striped pocket shirts")
    assert terms.kind == "shirts"
    assert terms.words == ("slim", "fit", "stretch", "cotton", "linen", "blend")


def test_only_the_first_article_type_counts_and_later_ones_are_not_words(vocab: TermVocabulary) -> None:
    assert vocab.update(None, "shirts or jeans") == TurnTerms(kind="shirts")
    assert vocab.update(None, "jeans or shirts") == TurnTerms(kind="jeans")


def test_case_and_punctuation_do_not_matter(vocab: TermVocabulary) -> None:
    assert vocab.update(None, "NAVY BLUE, Shirt!! For WOMEN?") == vocab.update(None, "navy blue shirt for women")


@pytest.mark.parametrize("text", ["", "   ", "!!! ???", "please, for the"])
def test_a_message_without_terms_gives_empty_terms(vocab: TermVocabulary, text: str) -> None:
    terms = vocab.update(None, text)
    assert terms == TurnTerms()
    assert terms.query() == ""


def test_hyphenated_and_apostrophe_words_stay_whole(vocab: TermVocabulary) -> None:
    assert vocab.update(None, "t-shirts").words == ("t-shirts",)
    assert vocab.update(None, "levi's jeans").words == ("levi's",)


# ------------------------------------------------------------------ exclusions


@pytest.mark.parametrize(
    ("text", "exclude"),
    [
        ("jeans, not puma", ("puma",)),
        ("jeans but not nike", ("nike",)),
        ("jeans without pockets", ("pockets",)),
        ("jeans other than puma", ("puma",)),
        ("jeans except the puma", ("puma",)),
        ("jeans, no shirt", ("shirts",)),  # an article type is excluded under its catalogue name
        ("jeans, not puma, not nike, not puma", ("puma", "nike")),  # once each, first mention first
        ("jeans with nothing else", ()),  # "no" inside "nothing" is not a negation
    ],
)
def test_negated_words_are_excluded_not_searched(vocab: TermVocabulary, text: str, exclude: tuple[str, ...]) -> None:
    terms = vocab.update(None, text)
    assert terms.exclude == exclude
    assert terms.kind == "jeans"
    assert not set(terms.words) & set(exclude)


@pytest.mark.parametrize("text", ["not this brand", "no that make", "something else, not this label"])
def test_not_this_brand_excludes_the_brand_shown_last(vocab: TermVocabulary, text: str) -> None:
    terms = vocab.update(None, text, shown_brand="puma")
    assert terms.exclude_brands == ("puma",)
    assert terms.excludes(product("Puma Men Black Sports Shoes", "Footwear", "Shoes", "Sports Shoes"))
    assert not terms.excludes(product("Nike Men Black Sports Shoes", "Footwear", "Shoes", "Sports Shoes"))
    nothing_shown = vocab.update(None, text)  # nothing shown yet: nothing to rule out
    assert nothing_shown.exclude == () and nothing_shown.exclude_brands == ()


def test_a_brand_word_without_this_is_not_the_shown_brand(vocab: TermVocabulary) -> None:
    assert vocab.update(None, "shirts, not brand", shown_brand="puma").exclude == ()


# ------------------------------------------------------------------ refinement across turns


def test_a_follow_up_without_an_article_type_refines_the_last_request(vocab: TermVocabulary, first: TurnTerms) -> None:
    assert vocab.update(first, "in red") == TurnTerms(kind="shirts", colour="red", usage="formal", gender="men")
    assert vocab.update(first, "for women").gender == "women"
    assert vocab.update(first, "casual ones").usage == "casual"


def test_the_same_article_type_refines_too(vocab: TermVocabulary, first: TurnTerms) -> None:
    assert vocab.update(first, "a shirt in red") == TurnTerms(kind="shirts", colour="red", usage="formal", gender="men")


def test_another_article_type_starts_over(vocab: TermVocabulary, first: TurnTerms) -> None:
    previous = vocab.update(first, "slim, not puma")
    assert vocab.update(previous, "jeans please") == TurnTerms(kind="jeans")


def test_an_article_type_after_a_request_without_one_starts_over(vocab: TermVocabulary) -> None:
    previous = vocab.update(None, "something red for men")
    assert previous.kind is None
    assert vocab.update(previous, "jeans") == TurnTerms(kind="jeans")


def test_exclusions_accumulate_across_refinements(vocab: TermVocabulary, first: TurnTerms) -> None:
    second = vocab.update(first, "not puma")
    third = vocab.update(second, "not nike, not puma")
    assert third.exclude == ("puma", "nike")


def test_words_accumulate_once_each_and_the_last_six_are_kept(vocab: TermVocabulary) -> None:
    one = vocab.update(None, "shirts slim fit cotton")
    assert one.words == ("slim", "fit", "cotton")
    two = vocab.update(one, "cotton linen blend")
    assert two.words == ("slim", "fit", "cotton", "linen", "blend")  # "cotton" keeps its first place
    three = vocab.update(two, "striped pocket")
    assert three.words == ("fit", "cotton", "linen", "blend", "striped", "pocket")


def test_asking_again_allows_shown_products_for_that_turn_only(vocab: TermVocabulary, first: TurnTerms) -> None:
    again = vocab.update(first, "show them again")
    assert again.repeat_shown
    assert (again.kind, again.colour) == ("shirts", "navy blue")
    assert not vocab.update(again, "in red").repeat_shown
    assert vocab.update(None, "the previous ones").repeat_shown


# ------------------------------------------------------------------ query and excludes


def test_query_puts_facets_first_then_words_then_gender() -> None:
    terms = TurnTerms(kind="jeans", colour="blue", usage="casual", gender="women", words=("slim", "stretch"))
    assert terms.query() == "blue jeans casual slim stretch for women"
    assert TurnTerms(words=("linen",)).query() == "linen"


@pytest.mark.parametrize(
    ("exclude", "excluded"),
    [
        ((), False),
        (("puma",), True),  # brand, from the title
        (("shirts",), True),  # article type, from the category path
        (("navy",), True),
        (("nike",), False),
        (("pum",), False),  # whole words only
        (("nike", "topwear"), True),  # any one is enough
    ],
)
def test_excludes_matches_whole_words_of_title_and_category(exclude: tuple[str, ...], excluded: bool) -> None:
    shirt = product("Puma Men Navy Blue Shirt", "Apparel", "Topwear", "Shirts")
    assert TurnTerms(exclude=exclude).excludes(shirt) is excluded


def test_excludes_does_not_split_hyphenated_words() -> None:
    tee = product("Nike Men Black T-Shirt", "Apparel", "Topwear", "Tshirts")
    assert TurnTerms(exclude=("t-shirt",)).excludes(tee)
    assert not TurnTerms(exclude=("shirt",)).excludes(tee)  # a t-shirt is not a shirt


# ------------------------------------------------------------------ vocabulary from products


def test_a_vocabulary_from_products_knows_their_facets_and_brands() -> None:
    products = [
        product("Puma Men Navy Blue Shirt", "Apparel", "Topwear", "Shirts", colour="Navy Blue", usage="Formal"),
        product("Nike Women Red Tops", "Apparel", "Topwear", "Tops", colour="Red"),
        product("", "Apparel", "Bottomwear", "Jeans"),  # no title, no attributes: adds the type only
    ]
    vocab = TermVocabulary.from_products(products)
    assert (vocab.kinds, vocab.colours, vocab.usages, vocab.brands) == (
        ["Jeans", "Shirts", "Tops"], ["", "Navy Blue", "Red"], ["", "Formal"], ["Nike", "Puma"]
    )  # fmt: skip
    assert vocab.update(None, "formal navy blue top for women") == TurnTerms(
        kind="tops", colour="navy blue", usage="formal", gender="women"
    )
    assert vocab.update(None, "") == TurnTerms()  # the empty attribute values are not facets
    assert [TermVocabulary.brand_of(p) for p in products] == ["puma", "nike", ""]


def test_every_catalogue_facet_is_recognised(catalogue: Catalogue) -> None:
    products = list(catalogue.products)
    vocab = TermVocabulary.from_products(products)
    for p in products:
        colour, usage = p.attributes.get("base_colour", ""), p.attributes.get("usage", "")
        if colour:
            assert vocab.update(None, f"{colour} things").colour == colour.lower(), p
        if usage:
            assert vocab.update(None, f"{usage} things").usage == usage.lower(), p
        kind = p.category[-1]
        assert vocab.update(None, kind).kind == kind.lower(), p


def test_a_product_is_ruled_out_by_its_own_brand(catalogue: Catalogue) -> None:
    vocab = TermVocabulary.from_products(catalogue.products)
    plain = [p for p in catalogue.products if re.fullmatch(r"[a-z0-9]+", TermVocabulary.brand_of(p))]
    assert len(plain) > 0.9 * len(catalogue.products)
    for p in plain:
        assert vocab.update(None, "not this brand", shown_brand=TermVocabulary.brand_of(p)).excludes(p), p


# ------------------------------------------------------------------ phrases, possessives, punctuated brands


def test_a_brand_with_punctuation_is_ruled_out_too(vocab: TermVocabulary) -> None:
    polo = product("U.S. Polo Assn. Men Navy Blue Shirt", "Apparel", "Topwear", "Shirts")
    assert vocab.update(None, "not this brand", shown_brand=TermVocabulary.brand_of(polo)).excludes(polo)


def test_possessive_gender_words_are_genders(vocab: TermVocabulary) -> None:
    assert vocab.update(None, "men's shirts") == TurnTerms(kind="shirts", gender="men")


def test_a_negated_colour_phrase_is_not_also_the_wanted_colour(vocab: TermVocabulary) -> None:
    terms = vocab.update(None, "shirts, not navy blue")
    assert terms.colour is None


def test_multi_word_article_types_are_recognised() -> None:
    vocab = TermVocabulary(kinds=["Casual Shoes", "Track Pants"], colours=[], usages=["Casual"])
    assert vocab.update(None, "track pants").kind == "track pants"
