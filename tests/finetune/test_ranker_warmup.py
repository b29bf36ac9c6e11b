"""Reading lessons: exactly one candidate line has the request's article type and colour."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from finetune.ranker_warmup import reading_lesson, reading_types
from retrieval.catalogue import Catalogue, load_catalogue


@pytest.fixture(scope="module")
def catalogue(fashion_dir: Path) -> Catalogue:
    return load_catalogue(fashion_dir, limit=3000, check_images=False)


def test_exactly_the_answer_has_the_requests_type_and_colour(catalogue: Catalogue) -> None:
    types = reading_types(catalogue, min_products=10)
    rng = random.Random(0)
    same_type_lessons = 0
    for _ in range(200):
        lesson = reading_lesson(catalogue, rng, by_type=types)
        assert len(lesson.candidates) == 20
        assert len({p.product_id for p in lesson.candidates}) == 20
        fits = [i for i, p in enumerate(lesson.candidates)
                if lesson.request == f"{p.attributes['base_colour'].lower()} {p.category[-1].lower()}"]  # fmt: skip
        assert fits == [lesson.answer]
        kind = lesson.candidates[lesson.answer].category[-1]
        same_type_lessons += sum(p.category[-1] == kind for p in lesson.candidates) > 1
    assert 60 < same_type_lessons < 140  # half the lessons make the colour decide between lines of one type


def test_the_answer_is_at_no_favoured_position(catalogue: Catalogue) -> None:
    types = reading_types(catalogue, min_products=10)
    rng = random.Random(1)
    positions = Counter(reading_lesson(catalogue, rng, by_type=types).answer for _ in range(400))
    assert set(positions) == set(range(20))
    assert max(positions.values()) < 45  # 20 expected per position


def test_a_catalogue_with_too_few_types_is_refused(catalogue: Catalogue) -> None:
    few = dict(list(reading_types(catalogue, min_products=10).items())[:5])
    with pytest.raises(ValueError, match="needs 20 common article types"):
        reading_lesson(catalogue, random.Random(0), by_type=few)
