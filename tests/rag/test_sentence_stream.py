"""SentenceStream: whole words only, only prefixes the check passes, and a take-back when the end fails."""

from __future__ import annotations

from rag.explanation_check import ExplanationChecker
from rag.sentence_stream import SentenceStream
from retrieval.catalogue import Product

SHOES = Product("1", "Catwalk Women Black Casual Shoes", ("Footwear", "Shoes", "Casual Shoes"),
                {"base_colour": "Black", "usage": "Sports"}, None)  # fmt: skip
SHIRT = Product("2", "Turtle Men Navy Blue Shirt", ("Apparel", "Topwear", "Shirts"),
                {"base_colour": "Navy Blue", "usage": "Formal"}, None)  # fmt: skip
TEE = Product("3", "Basics Men Red Tshirt", ("Apparel", "Topwear", "Tshirts"),
              {"base_colour": "Red", "usage": "Casual"}, None)  # fmt: skip
CHECKER = ExplanationChecker([SHOES, SHIRT, TEE])  # the catalogue's vocabulary: "casual" is a usage


def _feed(stream: SentenceStream, text: str) -> list[str]:
    """Feed ``text`` one character at a time, as tokens would come; the states shown after each delta."""
    states, shown = [], ""
    for end in range(1, len(text) + 1):
        if delta := stream.update(text[:end]):
            shown += delta
            states.append(shown)
    return states


def test_only_whole_words_of_the_model_are_shown() -> None:
    stream = SentenceStream(1, [SHOES], CHECKER)
    assert stream.update(" bla") == "" and stream.update(" black") == ""  # "black" may still grow
    assert stream.update(" black ") == "#1 (Catwalk Women Black Casual Shoes) is a black"
    assert stream.update(" black casual sh") == ""  # "casual" alone would claim a usage the record denies


def test_a_word_that_reads_false_alone_waits_for_the_phrase_that_makes_it_true() -> None:
    states = _feed(SentenceStream(1, [SHOES], CHECKER), " black casual shoes for women by Catwalk.")
    assert not any(s.endswith("black casual") for s in states)  # usage "casual" vs the record's Sports
    assert any(s.endswith("black casual shoes") for s in states)  # the article type "casual shoes": true
    assert states[-1].endswith("for women by")  # "Catwalk." may still grow


def test_finish_adds_the_rest_or_takes_back_what_was_shown() -> None:
    stream = SentenceStream(2, [SHOES, SHIRT], CHECKER, lead=" ")
    _feed(stream, " navy blue shirt for men by Arrow.")
    assert stream.shown == " #2 (Turtle Men Navy Blue Shirt) is a navy blue shirt for men by"
    assert stream.finish("#2 is a navy blue shirt for men by Turtle.") == (0, " Turtle.")
    taken = SentenceStream(2, [SHOES, SHIRT], CHECKER, lead=" ")
    shown = _feed(taken, " navy blue shirt for men by Arrow.")[-1]
    record = "#2: navy blue shirts for men, formal wear, brand Turtle."
    assert taken.finish(record) == (len(shown), " #2 (Turtle Men Navy Blue Shirt): navy blue shirts for men, formal"
                                                " wear, brand Turtle.")  # fmt: skip


def test_nothing_shown_needs_nothing_taken_back() -> None:
    stream = SentenceStream(1, [SHOES], CHECKER)
    assert _feed(stream, " red") == []
    assert stream.finish("#1: black casual shoes for women.") == (0, "#1 (Catwalk Women Black Casual Shoes): black"
                                                                     " casual shoes for women.")  # fmt: skip
