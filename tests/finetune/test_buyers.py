"""SYNTHETIC buyers and ranking cases: determinism, the preference model's invariants, splits, teacher answers."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from finetune.buyers import (
    BuyerConfig,
    CatalogueCodes,
    buyer_utility,
    generate_buyers,
    load_buyers,
    product_gender,
    query_likelihood,
    save_buyers,
)
from finetune.ranking_data import (
    make_case,
    ranker_case_prompt,
    sft_conversation,
    target_posterior,
    teacher_ranking,
)
from rag.ranker_format import candidate_line, resolve_ids
from retrieval.catalogue import Catalogue, load_catalogue


@pytest.fixture(scope="module")
def catalogue(fashion_dir: Path) -> Catalogue:
    return load_catalogue(fashion_dir, limit=4000, check_images=False)


@pytest.fixture(scope="module")
def buyers(catalogue: Catalogue) -> list:  # type: ignore[type-arg]
    return generate_buyers(catalogue, BuyerConfig(n_buyers=400, seed=3))


def test_same_seed_same_buyers_other_seed_others(catalogue: Catalogue, buyers: list) -> None:  # type: ignore[type-arg]
    again = generate_buyers(catalogue, BuyerConfig(n_buyers=400, seed=3))
    assert [b.to_json() for b in again] == [b.to_json() for b in buyers]
    other = generate_buyers(catalogue, BuyerConfig(n_buyers=50, seed=4))
    assert [b.history for b in other] != [b.history for b in buyers[:50]]


def test_histories_are_distinct_real_products_and_exclude_the_target(catalogue: Catalogue, buyers: list) -> None:  # type: ignore[type-arg]
    for b in buyers:
        assert 4 <= len(b.history) <= 12
        assert len(set(b.history)) == len(b.history)
        assert b.target not in b.history
        assert all(catalogue.get(p) is not None for p in (*b.history, b.target))
        assert b.synthetic


def test_queries_describe_the_target_and_photos_show_a_similar_product(catalogue: Catalogue, buyers: list) -> None:  # type: ignore[type-arg]
    with_photo = [b for b in buyers if b.query_image]
    assert 0.2 < len(with_photo) / len(buyers) < 0.4
    for b in buyers:
        target = catalogue.get(b.target)
        assert target is not None and target.category[-1].lower() in b.query_text
    for b in with_photo:
        photo, target = catalogue.get(b.query_image), catalogue.get(b.target)
        assert photo is not None and target is not None
        assert photo.category == target.category
        assert photo.attributes["base_colour"] == target.attributes["base_colour"]


def test_splits_are_disjoint_and_roughly_80_10_10(buyers: list) -> None:  # type: ignore[type-arg]
    counts = Counter(b.split for b in buyers)
    assert set(counts) == {"train", "validation", "test"}
    assert counts["train"] / len(buyers) > 0.7
    assert len({b.buyer_id for b in buyers}) == len(buyers)


def test_preferences_shape_purchases(catalogue: Catalogue, buyers: list) -> None:  # type: ignore[type-arg]
    codes = CatalogueCodes(catalogue.products)
    # Bought products have a higher latent utility than random catalogue products, for most buyers.
    rng = np.random.default_rng(0)
    wins = 0
    for b in buyers:
        bought = buyer_utility(b, codes, b.history).mean()
        random_ids = [codes.ids[i] for i in rng.integers(0, len(codes.ids), 30)]
        wins += bought > buyer_utility(b, codes, random_ids).mean()
    assert wins / len(buyers) > 0.95
    # Buyers for men almost never get women's products.
    genders = Counter(
        product_gender(catalogue.get(p).title)  # type: ignore[union-attr]
        for b in buyers
        if b.profile.gender == "Men"
        for p in b.history
    )
    assert genders["Women"] / sum(genders.values()) < 0.03, genders


def test_save_and_load_round_trip(tmp_path: Path, buyers: list) -> None:  # type: ignore[type-arg]
    counts = save_buyers(buyers, tmp_path)
    assert sum(counts.values()) == len(buyers)
    test = load_buyers(tmp_path, "test")
    assert [b.to_json() for b in test] == [b.to_json() for b in buyers if b.split == "test"]
    assert "SYNTHETIC" in (tmp_path / "README.md").read_text()


def test_one_of_20_case_and_full_list_case(catalogue: Catalogue, buyers: list) -> None:  # type: ignore[type-arg]
    b = buyers[0]
    pool = [p.product_id for p in catalogue.products[:60] if p.product_id != b.target]
    hits = [*pool[:7], b.target, *pool[7:]]
    case = make_case(b, hits, catalogue, protocol="one_of_20", rng=random.Random(0))
    assert case is not None
    assert len(case.candidates) == 20 and b.target in case.candidates
    assert sum(case.relevance.values()) == 1
    assert [h for h in hits if h in case.candidates] == list(case.candidates)  # retrieval order kept
    assert make_case(b, pool, catalogue, protocol="one_of_20") is None  # target not retrieved
    full = make_case(b, hits, catalogue, protocol="full_list")
    assert full is not None and full.candidates == tuple(hits[:20]) and full.relevance[b.target] == 3


@pytest.mark.parametrize("gender", ["Women", None])
def test_query_likelihood_matches_the_frequency_of_each_wording(catalogue: Catalogue, gender: str | None) -> None:
    from finetune.buyers import _query_words

    product = next(p for p in catalogue.products if p.attributes.get("base_colour") and p.attributes.get("usage"))
    rng = np.random.default_rng(0)
    draws = 20_000
    counts = Counter(_query_words(product, gender, rng) for _ in range(draws))
    wordings: Counter[str] = Counter()
    for text, n in counts.items():  # the same words under every lead
        wordings[
            text.split(": ")[-1].removeprefix("need ").removeprefix("looking for ").removeprefix("wholesale ")
        ] += n
    assert len(wordings) == (8 if gender else 4)
    for text, n in wordings.items():
        assert abs(query_likelihood(text, product, gender) - n / draws) < 0.015, text
    other = next(p for p in catalogue.products if p.category[-1] != product.category[-1])
    assert query_likelihood(next(iter(wordings)), other, gender) == 0.0  # another article type: never these words


def test_teacher_ranks_by_the_posterior_of_the_wanted_product(catalogue: Catalogue, buyers: list) -> None:  # type: ignore[type-arg]
    codes = CatalogueCodes(catalogue.products)
    b = buyers[1]
    hits = [b.target, *[p.product_id for p in catalogue.products[:40] if p.product_id != b.target]]
    case = make_case(b, hits, catalogue, protocol="full_list")
    assert case is not None
    ranking = teacher_ranking(case, codes, catalogue)
    assert sorted(ranking) == sorted(case.candidates)
    # Oracle: Bayes' rule written out.
    products = [catalogue.get(c) for c in case.candidates]
    prior = np.exp(buyer_utility(b, codes, case.candidates))
    words = np.array([max(query_likelihood(b.query_text, p, b.profile.gender), 1e-6) for p in products])  # type: ignore[arg-type]
    posterior = prior * words / (prior * words).sum()
    np.testing.assert_allclose(target_posterior(case, codes, catalogue), posterior, rtol=1e-9)
    by_id = {c: posterior[j] for j, c in enumerate(case.candidates)}
    assert [by_id[c] for c in ranking] == sorted(by_id.values(), reverse=True)
    assert query_likelihood(b.query_text, catalogue.get(b.target), b.profile.gender) > 0  # type: ignore[arg-type]
    example = sft_conversation(case, catalogue, codes, rng=random.Random(1), lookup_share=1.0)
    names = [m["tool_calls"][0]["function"]["name"] for m in example["messages"] if m.get("tool_calls")]
    assert names == ["get_products", "submit_ranking"]
    final = example["messages"][-1]["tool_calls"][0]["function"]["arguments"]["ids"]
    assert resolve_ids(final, case.candidates) == ranking[:10]
    assert final[0] == "ABCDEFGHIJKLMNOPQRST"[case.candidates.index(ranking[0])]
    assert {t["function"]["name"] for t in example["tools"]} == {"search_catalog", "get_products", "submit_ranking"}
    json.dumps(example)  # serialisable for a datasets.Dataset


def test_shuffled_answers_follow_the_teacher_and_carry_no_position_prior(catalogue: Catalogue, buyers: list) -> None:  # type: ignore[type-arg]
    # Ties between candidates are common (same request match and preference). Broken by the shown
    # position, a shuffled list taught "A first"; broken by retrieval order, the first id is uniform.
    codes = CatalogueCodes(catalogue.products)
    pool = [p.product_id for p in catalogue.products[:200]]
    rng, firsts = random.Random(0), Counter()
    for b in buyers[:200]:
        hits = [b.target, *[p for p in random.Random(b.buyer_id).sample(pool, 30) if p != b.target]]
        case = make_case(b, hits, catalogue, protocol="full_list")
        assert case is not None
        example = sft_conversation(case, catalogue, codes, rng=rng, lookup_share=0.0, shuffle=True)
        user = example["messages"][1]["content"]
        shown = {line[-2]: line[: -len(" [A]")] for line in user.split("Candidates:\n")[1].splitlines()}
        final = example["messages"][-1]["tool_calls"][0]["function"]["arguments"]["ids"]
        wanted = [catalogue.get(pid) for pid in teacher_ranking(case, codes, catalogue)[:10]]
        assert [shown[h] for h in final] == [candidate_line("A", p).removesuffix(" [A]") for p in wanted]  # type: ignore[arg-type]
        firsts[final[0]] += 1
    assert firsts["A"] / 200 < 0.15  # uniform would be 0.05; position tie-breaks gave ~0.4


def test_prompt_lists_profile_history_request_and_candidates(catalogue: Catalogue, buyers: list) -> None:  # type: ignore[type-arg]
    b = buyers[2]
    products = catalogue.products[:5]
    system, user = ranker_case_prompt(b, products, catalogue).messages
    assert "submit_ranking" in system["content"]
    assert b.profile.business_type in user["content"]
    assert b.query_text in user["content"]
    lines = user["content"].split("Candidates:\n")[1].splitlines()
    assert lines == [candidate_line(h, p) for h, p in zip("ABCDE", products, strict=True)]
    assert all(p.category[-1].lower() in line for p, line in zip(products, lines, strict=True))
