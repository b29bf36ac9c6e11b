"""Turns through the pipeline with a scripted LLM and a word-match search over real catalogue rows.

Real retrieval, real workers and HTTP are covered in ``tests/api/http/test_chat.py``; here the
LLM's answers are scripted so each degradation path is forced and checked exactly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from llms.errors import StreamInterruptedError, WorkerError
from rag.errors import InvalidTurnError, SessionNotFoundError
from rag.explainer_prompt import product_facts
from rag.explanation_check import ExplanationChecker
from rag.pipeline import Pipeline
from rag.terms import TermVocabulary
from rag.turn import (
    BuyerContext,
    CandidatesEvent,
    DoneEvent,
    PipelineConfig,
    RankingEvent,
    ReviseEvent,
    Sampling,
    Scored,
    TokenEvent,
    TurnRequest,
    TurnResult,
)
from retrieval.catalogue import Catalogue, Product

Reply = Callable[[Mapping[str, Any]], dict[str, Any]]


@dataclass
class _Done:
    message: dict[str, Any]


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def submit(*ids: str) -> Reply:
    return lambda payload: {"role": "assistant", "content": "", "tool_calls": [_call("submit_ranking", {"ids": ids})]}


Sentence = Callable[[int, str], str]  # (rank, facts line) -> what the explainer writes after "#k is a"


def truthful(rank: int, facts: str) -> str:
    """An explainer that copies its facts faithfully."""
    return " " + facts.replace(", brand ", " by ") + "."


class ScriptedLlm:
    """The dispatcher, scripted: ``complete`` answers the ranker and cold start, ``stream`` the explainer."""

    def __init__(self, ranker: Reply, sentence: Sentence = truthful, *, break_after: int | None = None,
                 cold_start: str = '{"topics": ["navy formal shirts"]}',
                 word_by_word: bool = False) -> None:  # fmt: skip
        self.ranker = ranker
        self.word_by_word = word_by_word  # yield to the event loop after each word, as a worker's tokens arrive
        self.sentence = sentence
        self.break_after = break_after
        self.cold_start = cold_start
        self.calls: list[dict[str, Any]] = []
        self.up = {"tandem-base", "tandem-ranker"}
        self.log: list[tuple[str, int]] = []  # the explainer's ("asked", rank) and ("wrote", rank), in time order

    def serves(self, model: str) -> bool:
        return model in self.up

    async def complete(self, payload: Mapping[str, Any], *, deadline_s: float | None = None) -> _Done:
        self.calls.append(dict(payload))
        if payload["model"] == "tandem-base":
            return _Done({"role": "assistant", "content": self.cold_start})
        return _Done(self.ranker(payload))

    async def stream(
        self, payload: Mapping[str, Any], *, deadline_s: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(dict(payload))
        assert payload["continue_final_message"] and payload["messages"][-1]["role"] == "assistant"
        line = payload["messages"][-2]["content"].splitlines()[-1]  # "Product #k: facts"
        rank, facts = int(line.split("#")[1].split(":")[0]), line.split(": ", 1)[1]
        self.log.append(("asked", rank))
        await asyncio.sleep(0)  # a worker's first token takes a moment: asks made meanwhile would show here
        for i, word in enumerate(self.sentence(rank, facts).split(" ")):
            if i == 0:
                self.log.append(("wrote", rank))
            if self.break_after is not None and i >= self.break_after:
                raise StreamInterruptedError("worker w1 went away mid-stream")
            yield {"choices": [{"delta": {"content": word if i == 0 else " " + word}}]}
            if self.word_by_word:
                await asyncio.sleep(0.002)


class WordSearch:
    """Retrieval stand-in: products ranked by request words found in their title and category; a photo adds Shirts."""

    def __init__(self, products: list[Product]) -> None:
        self.products = products
        self.queries: list[tuple[str | None, bool]] = []
        self.options: list[dict[str, Any]] = []

    async def __call__(
        self, text: str | None, image: Image.Image | None, k: int, search_filter: Any, /, **more: Any
    ) -> list[Scored]:
        self.queries.append((text, image is not None))
        self.options.append(more)
        words = set((text or "").lower().split()) | ({"shirts"} if image is not None else set())
        scored = []
        for i, p in enumerate(self.products):
            hay = set(f"{p.title} {' '.join(p.category)} {p.attributes.get('base_colour', '')}".lower().split())
            scored.append((len(words & hay) - i * 1e-6, p))
        scored.sort(key=lambda s: -s[0])
        hits = [Scored(p, round(s, 4)) for s, p in scored[:k] if s > 0]
        # Exploring: products matching none of the words, one per category path (as level 1's left-out categories).
        paths = {h.product.category for h in hits}
        for s, p in scored:
            if len(paths) - 1 < more.get("explore", 0) and s <= 0 and p.category not in paths:
                paths.add(p.category)
                hits.append(Scored(p, round(s, 4), explored=True))
        return hits


@pytest.fixture(scope="module")
def products(catalogue: Catalogue) -> list[Product]:
    shirts = [p for p in catalogue.products if p.category[-1] == "Shirts"][:30]
    kurtas = [p for p in catalogue.products if p.category[-1] == "Kurtas"][:20]
    return shirts + kurtas


def make_pipeline(products: list[Product], llm: ScriptedLlm, **config: Any) -> tuple[Pipeline, WordSearch]:
    by_id = {p.product_id: p for p in products}
    search = WordSearch(products)
    pipeline = Pipeline(
        search,
        lambda ids: {i: by_id[i] for i in ids if i in by_id},
        llm,
        PipelineConfig(**{"ranker_fusion": 1.0, **config}),  # the ranker's own order unless a test fuses
        vocabulary=TermVocabulary.from_products(products),
        checker=ExplanationChecker(products),
    )
    return pipeline, search


def test_the_ranker_order_is_fused_with_retrieval_order(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("C", "A", "B"))
    pipeline, _ = make_pipeline(products, llm, ranker_fusion=0.5)
    events, result = run(pipeline, TurnRequest(text="need blue shirts for men", top_k=5))
    candidates = [c.product.product_id for c in events[0].candidates]
    # By hand (RRF, k 60, equal weights): A 1/62+1/61 > C 1/61+1/63 > B 1/63+1/62 > D 1/64+1/64.
    assert [i.product.product_id for i in result.items[:4]] == [candidates[k] for k in (0, 2, 1, 3)]
    assert result.degraded == []


def run(pipeline: Pipeline, request: TurnRequest) -> tuple[list[Any], TurnResult]:
    async def collect() -> list[Any]:
        return [e async for e in pipeline.run(request)]

    events = asyncio.run(collect())
    assert isinstance(events[-1], DoneEvent)
    return events, events[-1].result


def test_text_turn_streams_candidates_ranking_tokens_done_in_order(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("C", "A", "B"))
    pipeline, search = make_pipeline(products, llm)
    events, result = run(pipeline, TurnRequest(text="need blue shirts for men", top_k=5))
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["CandidatesEvent", "RankingEvent"] and kinds[-1] == "DoneEvent"
    assert set(kinds[2:-1]) == {"TokenEvent"}
    candidates = events[0].candidates
    assert [i.product.product_id for i in result.items[:3]] == [candidates[k].product.product_id for k in (2, 0, 1)]
    assert [i.product.product_id for i in result.items[3:]] == [c.product.product_id for c in candidates[3:5]]
    assert result.degraded == [] and result.query == "blue shirts for men"
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == result.explanation
    assert search.queries[0] == ("blue shirts for men", False)  # key terms, not the whole message
    ranker_call = next(c for c in llm.calls if c["model"] == "tandem-ranker")
    assert "Request: blue shirts for men" in ranker_call["messages"][1]["content"]
    assert ranker_call["tool_choice"] == "required"  # guided decoding keeps the call well-formed when sampling
    assert {"first_card", "first_token", "total"} <= set(result.timing_ms)


def test_photo_turn_and_photo_plus_text_turn(products: list[Product]) -> None:
    photo = Image.new("RGB", (60, 80), "navy")
    llm = ScriptedLlm(submit("A"))
    pipeline, search = make_pipeline(products, llm)
    _, only_photo = run(pipeline, TurnRequest(image=photo))
    prompt = next(c for c in llm.calls if c["model"] == "tandem-ranker")["messages"][1]["content"]
    assert "Request: products like the photo [photo of a similar product attached]" in prompt  # as in training
    assert only_photo.items and all(i.product.category[-1] == "Shirts" for i in only_photo.items)
    _, both = run(pipeline, TurnRequest(text="kurtas", image=photo))
    assert search.queries == [(None, True), ("kurtas", True)]
    assert both.items[0].product.category[-1] in {"Kurtas", "Shirts"}


def test_follow_up_refines_and_does_not_repeat_shown_products(products: list[Product]) -> None:
    pipeline, search = make_pipeline(products, ScriptedLlm(submit("A", "B")))
    _, first = run(pipeline, TurnRequest(text="shirts for men", top_k=4))
    brand = first.items[0].product.title.split()[0]
    _, second = run(pipeline, TurnRequest(text="in blue, not this brand", session_id=first.session_id, top_k=4))
    assert search.queries[-1][0] == "blue shirts for men"  # refined, not a new topic
    shown = {i.product.product_id for i in first.items}
    assert shown.isdisjoint(i.product.product_id for i in second.items)
    assert all(not i.product.title.lower().startswith(brand.lower()) for i in second.items)
    _, again = run(pipeline, TurnRequest(text="show the previous ones again", session_id=first.session_id, top_k=4))
    assert any(i.product.product_id in shown for i in again.items)


def test_garbage_ranker_falls_back_to_retrieval_order_and_says_so(products: list[Product]) -> None:
    garbage = ScriptedLlm(lambda payload: {"role": "assistant", "content": "A>B>C?? {{"})
    pipeline, _ = make_pipeline(products, garbage)
    events, result = run(pipeline, TurnRequest(text="shirts", top_k=5))
    assert [i.product.product_id for i in result.items] == [c.product.product_id for c in events[0].candidates[:5]]
    assert [d.part for d in result.degraded] == ["ranker"]
    unknown_only = ScriptedLlm(submit("ZZ", "99999999"))
    _, result = run(make_pipeline(products, unknown_only)[0], TurnRequest(text="shirts"))
    assert [d.part for d in result.degraded] == ["ranker"] and result.ranker["hallucinated"] == 2

    def down(payload: Mapping[str, Any]) -> dict[str, Any]:
        raise WorkerError("all 2 attempt(s) failed")

    _, result = run(make_pipeline(products, ScriptedLlm(down))[0], TurnRequest(text="shirts"))
    assert result.items and result.degraded[0].part == "ranker" and "WorkerError" in result.degraded[0].reason


def test_explainer_naming_a_product_outside_the_ranking_is_caught(products: list[Product]) -> None:
    outsider = products[-1].title  # a kurta, never among the shirts ranked
    llm = ScriptedLlm(submit("A"), lambda rank, facts: f" shirt; or try the {outsider}." if rank == 2 else
                      truthful(rank, facts))  # fmt: skip
    events, result = run(make_pipeline(products, llm)[0], TurnRequest(text="shirts", top_k=3))
    assert [d.part for d in result.degraded] == ["explainer"]
    assert outsider.lower() in result.degraded[0].reason
    shown = [e.text for e in events if isinstance(e, TokenEvent)]
    assert len(shown) == 3 and outsider not in result.explanation  # never shown, not even streamed
    second = result.items[1].product
    assert shown[1] == f" #2 ({second.title}): {product_facts(second)}."  # the record's sentence instead
    assert shown[0].startswith(f"#1 ({result.items[0].product.title}) is a ")  # the model's own, checked


def test_a_false_attribute_claim_is_replaced_by_the_record(products: list[Product]) -> None:
    def wrong_colour(rank: int, facts: str) -> str:
        return " purple shirt for men, fine for any office." if rank == 1 else truthful(rank, facts)

    llm = ScriptedLlm(submit("A", "B", "C"), wrong_colour)
    _, result = run(make_pipeline(products, llm)[0], TurnRequest(text="blue shirts", top_k=3))
    first = result.items[0].product
    assert first.attributes["base_colour"] != "Purple"
    assert "purple" not in result.explanation.lower() and f"#1 ({first.title}): {product_facts(first)}." in (
        result.explanation)  # fmt: skip
    assert [d.part for d in result.degraded] == ["explainer"]
    assert "#1: colour 'purple'" in result.degraded[0].reason
    assert result.explanation.count(" is a ") == 2  # the other two sentences are the model's


def test_explainer_broken_mid_stream_keeps_products_and_falls_back(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("B", "A"), break_after=3)
    events, result = run(make_pipeline(products, llm)[0], TurnRequest(text="shirts", top_k=3))
    tokens = [e.text for e in events if isinstance(e, TokenEvent)]
    assert len(tokens) == 3 and isinstance(events[1], RankingEvent) and len(result.items) == 3
    assert result.degraded[0].part == "explainer" and "StreamInterruptedError" in result.degraded[0].reason
    # Nothing half-written reaches the buyer: every sentence is the record's.
    assert result.explanation == " ".join(
        f"#{k} ({i.product.title}): {product_facts(i.product)}." for k, i in enumerate(result.items, 1))  # fmt: skip


def test_a_turn_does_not_wait_on_llms_that_are_not_up(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("C", "B", "A"))
    llm.up = set()  # the embedded worker is still loading its model
    pipeline, _ = make_pipeline(products, llm)
    buyer = BuyerContext(profile="boutique", history=())
    events, result = run(pipeline, TurnRequest(text="shirts", top_k=3, buyer=buyer))
    assert llm.calls == []
    assert [i.product.product_id for i in result.items] == [c.product.product_id for c in events[0].candidates[:3]]
    assert [d.part for d in result.degraded] == ["cold_start", "ranker", "explainer"]
    assert all("not ready" in d.reason for d in result.degraded)
    assert result.explanation.startswith(f"#1 ({result.items[0].product.title}): ")


def test_cold_start_retrieves_on_the_base_models_topics(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("A"), cold_start='{"topics": ["kurtas red", "navy shirts", "Navy shirts"]}')
    pipeline, search = make_pipeline(products, llm)
    buyer = BuyerContext(profile="boutique in South Asia", history=())
    _, result = run(pipeline, TurnRequest(text="shirts", buyer=buyer))
    assert [q for q, _ in search.queries] == ["shirts", "kurtas red", "navy shirts"]
    ranker_prompt = next(c for c in llm.calls if c["model"] == "tandem-ranker")["messages"][1]["content"]
    assert "interests: kurtas red, navy shirts" in ranker_prompt and "boutique in South Asia" in ranker_prompt
    bad = ScriptedLlm(submit("A"), cold_start="I like shirts")
    _, result = run(make_pipeline(products, bad)[0], TurnRequest(text="shirts", buyer=buyer))
    assert [d.part for d in result.degraded] == ["cold_start"] and result.items


def test_history_goes_to_the_ranker_and_sampling_knobs_pass_through(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("A"))
    pipeline, search = make_pipeline(products, llm)
    buyer = BuyerContext(profile="department store", history=(products[40].product_id, "not-a-product"))
    sampling = Sampling(temperature=0.9, top_p=0.8, top_k=20, seed=7)
    run(pipeline, TurnRequest(text="shirts", buyer=buyer, sampling=sampling))
    ranker = next(c for c in llm.calls if c["model"] == "tandem-ranker")
    assert (ranker["temperature"], ranker["top_p"], ranker["top_k"], ranker["seed"]) == (0.9, 0.8, 20, 7)
    assert "- kurtas |" in ranker["messages"][1]["content"]  # the known past order, the unknown id skipped
    assert len(search.queries) == 1  # history known: no cold start


def test_explored_categories_join_the_candidates_after_the_precise_hits(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("A"))
    pipeline, search = make_pipeline(products, llm)
    events, _ = run(pipeline, TurnRequest(text="shirts", top_k=5, candidates=8, explore=3))
    candidates = events[0].candidates
    assert search.options == [{"explore": 3}]
    assert [c.explored for c in candidates] == [False] * 7 + [True]  # the test catalogue has one other path
    assert candidates[-1].product.category[-1] == "Kurtas"
    ranker = next(c for c in llm.calls if c["model"] == "tandem-ranker")
    ids = ranker["tools"][-1]["function"]["parameters"]["properties"]["ids"]
    assert ids["items"]["enum"] == list("ABCDEFGH") and ids["uniqueItems"] is True and ids["minItems"] == 5
    run(pipeline, TurnRequest(text="shirts", top_k=5))
    assert search.options[-1] == {}  # a Search without the keyword serves turns that do not explore


def test_bad_turns_are_refused_before_any_work(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("A"))
    pipeline, search = make_pipeline(products, llm)
    with pytest.raises(InvalidTurnError):
        run(pipeline, TurnRequest(text="   "))
    with pytest.raises(SessionNotFoundError):
        run(pipeline, TurnRequest(text="shirts", session_id="nope"))
    assert search.queries == [] and llm.calls == []


def test_events_are_frozen_dataclasses() -> None:
    event = CandidatesEvent("s", "q", [])
    with pytest.raises(AttributeError):
        event.query = "x"  # type: ignore[misc]


def test_sentences_name_their_products_and_a_bad_rank_is_caught(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("B", "A"))
    events, result = run(make_pipeline(products, llm)[0], TurnRequest(text="shirts", top_k=3))
    first, second = (i.product for i in result.items[:2])
    assert result.explanation.startswith(f"#1 ({first.title}) is a {product_facts(first).split(',')[0]}")
    assert f" #2 ({second.title}) is a " in result.explanation
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == result.explanation
    assert result.degraded == []
    sentence_calls = [c for c in llm.calls if c.get("continue_final_message")]
    assert [c["messages"][-1]["content"] for c in sentence_calls] == ["#1 is a", "#2 is a", "#3 is a"]
    assert all(c["stop"] == ["\n"] and c["temperature"] == 0.0 for c in sentence_calls)
    past = ScriptedLlm(submit("A"), lambda rank, facts: " shirt, better than #7.")
    _, result = run(make_pipeline(products, past)[0], TurnRequest(text="shirts", top_k=3))
    assert [d.part for d in result.degraded] == ["explainer"] and "#7" in result.degraded[0].reason


def test_mmr_over_the_ranking_spreads_near_duplicates(products: list[Product]) -> None:
    import numpy as np

    pipeline, _ = make_pipeline(products, ScriptedLlm(submit(*"ABCDEFGHIJ")))
    rng = np.random.default_rng(0)
    ids = [p.product_id for p in products]
    same = rng.normal(size=8)
    table = {pid: (same if i % 2 == 0 else rng.normal(size=8)) for i, pid in enumerate(ids)}

    async def vectors(wanted: Any) -> dict[str, Any]:
        return {pid: table[pid] for pid in wanted}

    pipeline.vectors = vectors
    events, plain = run(pipeline, TurnRequest(text="shirts", top_k=4))
    order = [c.product.product_id for c in events[0].candidates]
    assert [i.product.product_id for i in plain.items] == order[:4]  # the ranker's order
    _, diverse = run(pipeline, TurnRequest(text="shirts", top_k=4, mmr_lambda=0.0))
    twins = [i for i in diverse.items if ids.index(i.product.product_id) % 2 == 0]
    assert diverse.items[0].product.product_id == order[0] and len(twins) == 1  # one of the identical ones only
    _, one = run(pipeline, TurnRequest(text="shirts", top_k=4, mmr_lambda=1.0))
    assert [i.product.product_id for i in one.items] == [i.product.product_id for i in plain.items]


def test_every_llm_call_of_a_session_carries_its_routing_key(products: list[Product]) -> None:
    """OpenAI's ``user``: one hashed key per session (the dispatcher's affinity policy routes by it), never the id."""
    llm = ScriptedLlm(submit("A", "B"))
    pipeline, _ = make_pipeline(products, llm)
    turns: list[set[Any]] = []

    def turn(request: TurnRequest) -> TurnResult:
        before = len(llm.calls)
        _, result = run(pipeline, request)
        turns.append({c.get("user") for c in llm.calls[before:]})
        return result

    first = turn(TurnRequest(text="shirts for men", top_k=4))
    turn(TurnRequest(text="in blue", session_id=first.session_id, top_k=4))
    turn(TurnRequest(text="shirts for men", top_k=4))  # a new session
    assert all(len(keys) == 1 and None not in keys for keys in turns), "every call of a turn, one key"
    assert turns[0] == turns[1] != turns[2], "the same session, the same key; another session, another"
    assert first.session_id not in turns[0], "a hash, not the session id itself"


def test_the_first_sentence_is_asked_alone_and_the_rest_once_it_is_being_written(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("C", "A", "B"))
    pipeline, _ = make_pipeline(products, llm)
    events, result = run(pipeline, TurnRequest(text="need blue shirts for men", top_k=5))
    asked = [rank for what, rank in llm.log if what == "asked"]
    assert asked[0] == 1 and sorted(asked) == list(range(1, len(asked) + 1)) and len(asked) >= 2
    # Nothing else is asked before sentence 1 has its first words.
    assert llm.log.index(("wrote", 1)) < llm.log.index(("asked", 2))
    assert result.explanation.startswith(next(e.text for e in events if isinstance(e, TokenEvent)))


def test_a_first_sentence_that_fails_at_once_does_not_hold_back_the_others(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("C", "A", "B"), break_after=0)  # every sentence breaks before its first word
    pipeline, _ = make_pipeline(products, llm)
    _, result = run(pipeline, TurnRequest(text="need blue shirts for men", top_k=5))
    asked = [rank for what, rank in llm.log if what == "asked"]
    assert len(asked) >= 2 and asked[0] == 1  # the rest were still asked
    assert any(d.part == "explainer" for d in result.degraded)


def shown_states(events: list[Any]) -> list[str]:
    """The explanation as the buyer sees it after each token or revise event."""
    states, text = [], ""
    for e in events:
        if isinstance(e, TokenEvent | ReviseEvent):
            text = text + e.text if isinstance(e, TokenEvent) else e.text
            states.append(text)
    return states


def test_sentences_are_shown_word_by_word_and_only_as_far_as_the_check_passes(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("C", "A", "B"), word_by_word=True)
    events, result = run(make_pipeline(products, llm)[0], TurnRequest(text="blue shirts for men", top_k=3))
    states = shown_states(events)
    assert not any(isinstance(e, ReviseEvent) for e in events) and states[-1] == result.explanation
    assert len(states) > 3 * 3  # several words per sentence, not a sentence at a time
    checker, ranked = ExplanationChecker(products), [i.product for i in result.items]
    for state in states:
        assert result.explanation.startswith(state)
        # Whole words only, each state true on its own.
        assert len(state) == len(result.explanation) or result.explanation[len(state)] == " "
        raw = state
        for k, product in enumerate(ranked, 1):  # the check reads what the model wrote: "#k", not the title
            raw = raw.replace(f"#{k} ({product.title})", f"#{k}")
        assert checker.check(raw, ranked).ok
    first = result.items[0].product
    assert states[0].startswith(f"#1 ({first.title}) is a ") and len(states[0]) > len(f"#1 ({first.title}) is a ")
    assert result.explainer["retracted"] == 0 and result.explainer["model_sentences"] == 3


def test_a_false_claim_at_the_end_takes_back_the_words_shown_before_it(products: list[Product]) -> None:
    def wrong_brand(rank: int, facts: str) -> str:
        return " " + facts.split(", brand ", maxsplit=1)[0] + " by Gucci." if rank == 1 else truthful(rank, facts)

    llm = ScriptedLlm(submit("A", "B", "C"), wrong_brand, word_by_word=True)
    events, result = run(make_pipeline(products, llm)[0], TurnRequest(text="shirts", top_k=3))
    first = result.items[0].product
    revise = [e for e in events if isinstance(e, ReviseEvent)]
    assert len(revise) == 1 and revise[0].text == f"#1 ({first.title}): {product_facts(first)}."
    states = shown_states(events)
    before = states[states.index(revise[0].text) - 1]
    assert before.startswith(f"#1 ({first.title}) is a ")  # its true words were shown, then taken back
    assert not any("gucci" in s.lower() for s in states) and states[-1] == result.explanation
    assert result.explainer["retracted"] == 1 and "brand 'Gucci'" in result.degraded[0].reason


def test_a_false_claim_in_the_first_words_is_never_shown_and_needs_no_taking_back(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("A", "B", "C"), lambda rank, facts: " purple shirt for men." if rank == 1 else
                      truthful(rank, facts), word_by_word=True)  # fmt: skip
    events, result = run(make_pipeline(products, llm)[0], TurnRequest(text="blue shirts", top_k=3))
    assert not any(isinstance(e, ReviseEvent) for e in events)
    assert all("purple" not in s for s in shown_states(events)) and result.explainer["retracted"] == 0
    assert [d.part for d in result.degraded] == ["explainer"]


def test_with_stream_words_off_each_sentence_is_shown_once_whole(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("C", "A", "B"), word_by_word=True)
    events, result = run(make_pipeline(products, llm, stream_words=False)[0], TurnRequest(text="shirts", top_k=3))
    tokens = [e.text for e in events if isinstance(e, TokenEvent)]
    assert len(tokens) == 3 and "".join(tokens) == result.explanation
