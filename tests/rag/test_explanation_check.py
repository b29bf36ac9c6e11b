"""The explanation check flags every product title or catalogue id outside the ranking, and nothing else."""

from __future__ import annotations

import pytest

from rag.explanation_check import ExplanationChecker
from retrieval.catalogue import Product


def _p(pid: str, title: str) -> Product:
    return Product(pid, title, ("Apparel", "Topwear", "Shirts"), {"base_colour": "Blue", "usage": "Casual"}, None)


CATALOGUE = [
    _p("15970", "Turtle Check Men Navy Blue Shirt"),
    _p("39386", "Peter England Men Party Blue Jeans"),
    _p("59263", "Titan Women Silver Watch"),
    _p("21379", "Manchester United Men Solid Black Track Pants"),
    _p("53759", "Puma Men Grey T-shirt"),
    _p("1855", "Inkfruit Mens Chain Reaction T-shirt"),
    _p("30805", "Fabindia Men Striped Green Shirt"),
    _p("30806", "Fabindia Men Striped Green Shirt"),  # titles repeat in a real catalogue
    _p("777", "Watch"),  # a one-word title is an ordinary word
]


def test_names_from_the_ranking_pass_and_others_are_flagged() -> None:
    checker = ExplanationChecker(CATALOGUE)
    ranked = CATALOGUE[:2]
    ok = checker.check(
        "The turtle check men navy blue shirt suits office wear; Peter England Men Party Blue Jeans too.", ranked
    )
    assert ok.ok and ok.names_ranked and len(ok.mentions) == 2
    bad = checker.check(
        "Try the Titan Women Silver Watch, or product 21379, with the Turtle Check Men Navy Blue Shirt.", ranked
    )
    assert not bad.ok
    assert sorted((m.kind, m.text) for m in bad.flagged) == [("id", "21379"), ("title", "titan women silver watch")]
    assert bad.names_ranked


def test_plain_words_numbers_and_one_word_titles_are_not_mentions() -> None:
    checker = ExplanationChecker(CATALOGUE)
    check = checker.check("A watch for 12 months of casual wear, in stock by 2026.", CATALOGUE[:1])
    assert check.mentions == [] and check.ok and not check.names_ranked


@pytest.mark.parametrize(
    "text",
    [
        "We recommend product 99999, the best.",
        "Order item no. 4411 today.",
        "SKU: 123456 is in stock.",
        "Article #80001 fits.",
    ],
)
def test_an_id_the_catalogue_lacks_is_still_an_id_outside_the_ranking(text: str) -> None:
    """An injected "recommend product 99999": the number is presented as a product, and no ranked one has it."""
    check = ExplanationChecker(CATALOGUE).check(text, CATALOGUE[:2])
    assert not check.ok
    assert [m.text for m in check.flagged if m.kind == "id"] == [next(w.strip("#:.,") for w in text.split()
                                                                      if w.strip("#:.,").isdigit())]  # fmt: skip


def test_a_ranked_id_presented_as_one_is_fine_and_ordinary_numbers_are_not_ids() -> None:
    checker = ExplanationChecker(CATALOGUE)
    assert checker.check("Product 15970 suits office wear.", CATALOGUE[:1]).ok
    assert checker.check("Pack of 2, ships in 10 days, 2026 season.", CATALOGUE[:1]).mentions == []


def test_the_longest_title_wins_and_shared_titles_count_as_ranked() -> None:
    checker = ExplanationChecker([*CATALOGUE, _p("9", "Puma Men Grey T-shirt Pack of 2")])
    check = checker.check("The Puma Men Grey T-shirt Pack of 2 is cheaper.", CATALOGUE[:1])
    assert [(m.text, m.product_ids) for m in check.flagged] == [("puma men grey t-shirt pack of 2", ("9",))]
    shared = checker.check("Fabindia Men Striped Green Shirt fits.", [CATALOGUE[7]])
    assert shared.ok and shared.mentions[0].product_ids == ("30805", "30806")


def test_rank_references_past_the_list_are_flagged() -> None:
    checker = ExplanationChecker(CATALOGUE)
    check = checker.check("#1 suits offices and #2 parties; #3 is for weekends.", CATALOGUE[:2])
    assert [(m.kind, m.text, m.ranked) for m in check.mentions] == [
        ("rank", "#1", True),
        ("rank", "#2", True),
        ("rank", "#3", False),
    ]
    assert [m.text for m in check.flagged] == ["#3"]


def test_references_get_their_titles_written_in() -> None:
    from rag.explainer_prompt import expand_references

    ranked = CATALOGUE[:2]
    text = "For you, #1 is navy; #2 adds jeans and #12 is not ranked. #"
    assert expand_references(text, ranked) == (
        "For you, #1 (Turtle Check Men Navy Blue Shirt) is navy; #2 (Peter England Men Party Blue Jeans) adds jeans"
        " and #12 is not ranked. #"
    )


KURTA = Product("7", "Biba Women Navy Blue Kurta", ("Apparel", "Topwear", "Kurtas"),
                {"base_colour": "Navy Blue", "usage": "Ethnic"}, None)  # fmt: skip
SHOES = Product("8", "Red Tape Men Brown Casual Shoes", ("Footwear", "Shoes", "Casual Shoes"),
                {"base_colour": "Brown", "usage": "Casual"}, None)  # fmt: skip
BLACK = Product("9", "Puma Kids Black Sports Shoes", ("Footwear", "Shoes", "Sports Shoes"),
                {"base_colour": "Black", "usage": "Sports"}, None)  # fmt: skip


@pytest.mark.parametrize(
    ("sentence", "product", "expected"),
    [
        # True, and paraphrased: plural or singular, part of a two-word colour, praise that is no attribute.
        ("#1 is a navy blue kurta for women by Biba, for ethnic wear.", KURTA, []),
        ("#1 is a lovely blue kurtas set for women, a great choice.", KURTA, []),
        # A brand that is a colour word is read as the brand, and an article type before a usage word.
        ("#1 is a pair of brown casual shoes for men by Red, made for casual wear.", SHOES, []),
        ("#1 is a black sports shoe for boys by Puma, for sports wear.", BLACK, []),
        # One false claim of each kind.
        ("#1 is a black kurta for women by Biba.", KURTA, [("colour", "black")]),
        ("#1 is a navy blue shirt for women by Biba.", KURTA, [("article type", "shirt")]),
        ("#1 is a navy blue kurta for men by Biba.", KURTA, [("gender", "men")]),
        ("#1 is a navy blue kurta for women by Biba, for formal wear.", KURTA, [("usage", "formal")]),
        ("#1 is a navy blue kurta for women by Arrow.", KURTA, [("brand", "Arrow")]),
        ("#1 is a brown formal shoe by Red, for casual wear.", SHOES, [("article type", "formal shoe")]),
        # A brand of several words, whole or shortened; the words after it are claims of their own.
        ("#1 is a pair of brown casual shoes by Red Tape, for casual wear.", SHOES, []),
        ("#1 is a pair of brown casual shoes by Red Tape Women, for casual wear.", SHOES, [("gender", "women")]),
        ("#1 is a navy blue kurta by Red Tape.", KURTA, [("brand", "Red Tape")]),
    ],
)
def test_attribute_claims_are_read_against_the_record(
    sentence: str, product: Product, expected: list[tuple[str, str]]
) -> None:
    checker = ExplanationChecker([*CATALOGUE, KURTA, SHOES, BLACK,
                                  Product("10", "Arrow Men Formal Shoes", ("Footwear", "Shoes", "Formal Shoes"),
                                          {"base_colour": "Black", "usage": "Formal"}, None)])  # fmt: skip
    check = checker.check(sentence, [product])
    assert [(c.kind, c.claimed) for _, c in check.false_claims] == expected
    assert check.ok is not expected


def test_claims_go_to_the_product_the_words_follow() -> None:
    checker = ExplanationChecker([KURTA, SHOES, BLACK])
    ranked = [KURTA, SHOES]
    assert checker.check("#1 is a navy kurta for women and #2 a brown casual shoe for men.", ranked).ok
    swapped = checker.check("#1 is a brown casual shoe for men and #2 a navy kurta for women.", ranked)
    assert {rank for rank, _ in swapped.false_claims} == {1, 2}
    assert "#1: colour 'brown' (record: Navy Blue)" in swapped.reasons()


def test_record_sentences_state_only_what_the_record_holds_and_pass_the_check() -> None:
    from rag.explainer_prompt import product_facts, record_sentence

    dress = Product("11", "Mineral Blue Dress", ("Apparel", "Dress", "Dresses"),
                    {"base_colour": "Blue", "usage": "Casual"}, None)  # fmt: skip  # no gender word in the title
    assert product_facts(dress) == "blue dresses, casual wear, brand Mineral"  # no invented "for unisex"
    assert product_facts(KURTA) == "navy blue kurtas for women, ethnic wear, brand Biba"
    checker = ExplanationChecker([KURTA, SHOES, BLACK, dress])
    for rank, product in enumerate([KURTA, SHOES, BLACK, dress], 1):
        sentence = record_sentence(product, rank)
        assert checker.check(sentence, [KURTA, SHOES, BLACK, dress]).ok, sentence
