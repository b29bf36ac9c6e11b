"""The explanation check flags every product title or catalogue id outside the ranking, and nothing else."""

from __future__ import annotations

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


def test_reference_expander_names_products_on_a_stream_split_anywhere() -> None:
    from rag.explainer_prompt import ReferenceExpander, expand_references

    ranked = CATALOGUE[:2]
    text = "For you, #1 is navy; #2 adds jeans and #12 is not ranked. #"
    expected = expand_references(text, ranked)
    assert expected.startswith("For you, Turtle Check Men Navy Blue Shirt is navy; Peter England Men Party Blue Jeans")
    assert "#12" in expected and expected.endswith("#")
    for size in (1, 2, 3, 7):
        expander = ReferenceExpander(ranked)
        pieces = [expander.feed(text[i : i + size]) for i in range(0, len(text), size)]
        streamed = "".join(pieces) + expander.flush()
        assert streamed == expected, size
        assert not any("#1 " in piece for piece in pieces)  # a reference is never sent half-expanded
