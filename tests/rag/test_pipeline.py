"""Turns through the pipeline with a scripted LLM and a word-match search over real catalogue rows.

Real retrieval, real workers and HTTP are covered in ``tests/api/test_chat.py``; here the
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
from rag.explanation_check import ExplanationChecker
from rag.pipeline import (
    BuyerContext,
    CandidatesEvent,
    DoneEvent,
    PartFailedEvent,
    Pipeline,
    PipelineConfig,
    RankingEvent,
    Sampling,
    Scored,
    TokenEvent,
    TurnRequest,
    TurnResult,
)
from rag.terms import TermVocabulary
from retrieval.catalogue import Catalogue, Product

Reply = Callable[[Mapping[str, Any]], dict[str, Any]]


@dataclass
class _Done:
    message: dict[str, Any]


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def submit(*ids: str) -> Reply:
    return lambda payload: {"role": "assistant", "content": "", "tool_calls": [_call("submit_ranking", {"ids": ids})]}


class ScriptedLlm:
    """The dispatcher, scripted: ``complete`` answers the ranker (and cold start), ``stream`` the explainer."""

    def __init__(self, ranker: Reply, explanation: str | Callable[[list[str]], str] = "", *,
                 break_after: int | None = None, cold_start: str = '["navy formal shirts"]') -> None:  # fmt: skip
        self.ranker = ranker
        self.explanation = explanation
        self.break_after = break_after
        self.cold_start = cold_start
        self.calls: list[dict[str, Any]] = []

    async def complete(self, payload: Mapping[str, Any], *, deadline_s: float | None = None) -> _Done:
        self.calls.append(dict(payload))
        if payload["model"] == "tandem-base":
            return _Done({"role": "assistant", "content": self.cold_start})
        return _Done(self.ranker(payload))

    async def stream(
        self, payload: Mapping[str, Any], *, deadline_s: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(dict(payload))
        ranked = [line.split("] ", 1)[1].split(" | ")[0] for line in payload["messages"][1]["content"].splitlines()
                  if line.startswith("#")]  # fmt: skip
        text = self.explanation(ranked) if callable(self.explanation) else self.explanation
        for i, word in enumerate(text.split(" ")):
            if self.break_after is not None and i >= self.break_after:
                raise StreamInterruptedError("worker w1 went away mid-stream")
            yield {"choices": [{"delta": {"content": word if i == 0 else " " + word}}]}


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
        PipelineConfig(**config),
        vocabulary=TermVocabulary.from_products(products),
        checker=ExplanationChecker(products),
    )
    return pipeline, search


def naming(n: int = 1) -> Callable[[list[str]], str]:
    return lambda titles: "For this request, " + " and ".join(titles[:n]) + " fit well."


def run(pipeline: Pipeline, request: TurnRequest) -> tuple[list[Any], TurnResult]:
    async def collect() -> list[Any]:
        return [e async for e in pipeline.run(request)]

    events = asyncio.run(collect())
    assert isinstance(events[-1], DoneEvent)
    return events, events[-1].result


def test_text_turn_streams_candidates_ranking_tokens_done_in_order(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("C", "A", "B"), naming(2))
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
    llm = ScriptedLlm(submit("A"), naming())
    pipeline, search = make_pipeline(products, llm)
    _, only_photo = run(pipeline, TurnRequest(image=photo))
    prompt = next(c for c in llm.calls if c["model"] == "tandem-ranker")["messages"][1]["content"]
    assert "Request: products like the photo [photo of a similar product attached]" in prompt  # as in training
    assert only_photo.items and all(i.product.category[-1] == "Shirts" for i in only_photo.items)
    _, both = run(pipeline, TurnRequest(text="kurtas", image=photo))
    assert search.queries == [(None, True), ("kurtas", True)]
    assert both.items[0].product.category[-1] in {"Kurtas", "Shirts"}


def test_follow_up_refines_and_does_not_repeat_shown_products(products: list[Product]) -> None:
    pipeline, search = make_pipeline(products, ScriptedLlm(submit("A", "B"), naming()))
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
    garbage = ScriptedLlm(lambda payload: {"role": "assistant", "content": "A>B>C?? {{"}, naming())
    pipeline, _ = make_pipeline(products, garbage)
    events, result = run(pipeline, TurnRequest(text="shirts", top_k=5))
    assert [i.product.product_id for i in result.items] == [c.product.product_id for c in events[0].candidates[:5]]
    assert [d.part for d in result.degraded] == ["ranker"]
    unknown_only = ScriptedLlm(submit("ZZ", "99999999"), naming())
    _, result = run(make_pipeline(products, unknown_only)[0], TurnRequest(text="shirts"))
    assert [d.part for d in result.degraded] == ["ranker"] and result.ranker["hallucinated"] == 2

    def down(payload: Mapping[str, Any]) -> dict[str, Any]:
        raise WorkerError("all 2 attempt(s) failed")

    _, result = run(make_pipeline(products, ScriptedLlm(down, naming()))[0], TurnRequest(text="shirts"))
    assert result.items and result.degraded[0].part == "ranker" and "WorkerError" in result.degraded[0].reason


def test_explainer_naming_a_product_outside_the_ranking_is_caught(products: list[Product]) -> None:
    outsider = products[-1].title  # a kurta, never among the shirts ranked
    llm = ScriptedLlm(submit("A"), lambda titles: f"Try the {outsider} with {titles[0]}.")
    _, result = run(make_pipeline(products, llm)[0], TurnRequest(text="shirts", top_k=3))
    assert [d.part for d in result.degraded] == ["explainer"]
    assert outsider.lower() in result.degraded[0].reason
    assert outsider not in result.explanation and result.items[0].product.title in result.explanation


def test_explainer_broken_mid_stream_keeps_products_and_falls_back(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("B", "A"), naming(2), break_after=3)
    events, result = run(make_pipeline(products, llm)[0], TurnRequest(text="shirts", top_k=3))
    assert sum(isinstance(e, TokenEvent) for e in events) == 3
    failed = [e for e in events if isinstance(e, PartFailedEvent)]
    assert len(failed) == 1 and isinstance(failed[0].error, StreamInterruptedError)
    assert events.index(failed[0]) == len(events) - 2  # after the tokens, before Done
    assert isinstance(events[1], RankingEvent) and len(result.items) == 3
    assert result.degraded[0].part == "explainer" and "StreamInterruptedError" in result.degraded[0].reason
    assert result.explanation.startswith("Closest matches")


def test_cold_start_retrieves_on_the_base_models_topics(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("A"), naming(), cold_start='Topics: ["kurtas red", "navy shirts"]')
    pipeline, search = make_pipeline(products, llm)
    buyer = BuyerContext(profile="boutique in South Asia", history=())
    _, result = run(pipeline, TurnRequest(text="shirts", buyer=buyer))
    assert [q for q, _ in search.queries] == ["shirts", "kurtas red", "navy shirts"]
    ranker_prompt = next(c for c in llm.calls if c["model"] == "tandem-ranker")["messages"][1]["content"]
    assert "interests: kurtas red, navy shirts" in ranker_prompt and "boutique in South Asia" in ranker_prompt
    bad = ScriptedLlm(submit("A"), naming(), cold_start="I like shirts")
    _, result = run(make_pipeline(products, bad)[0], TurnRequest(text="shirts", buyer=buyer))
    assert [d.part for d in result.degraded] == ["cold_start"] and result.items


def test_history_goes_to_the_ranker_and_sampling_knobs_pass_through(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("A"), naming())
    pipeline, search = make_pipeline(products, llm)
    buyer = BuyerContext(profile="department store", history=(products[40].product_id, "not-a-product"))
    sampling = Sampling(temperature=0.9, top_p=0.8, top_k=20, seed=7)
    run(pipeline, TurnRequest(text="shirts", buyer=buyer, sampling=sampling))
    ranker = next(c for c in llm.calls if c["model"] == "tandem-ranker")
    assert (ranker["temperature"], ranker["top_p"], ranker["top_k"], ranker["seed"]) == (0.9, 0.8, 20, 7)
    assert "- kurtas |" in ranker["messages"][1]["content"]  # the known past order, the unknown id skipped
    assert len(search.queries) == 1  # history known: no cold start


def test_explored_categories_join_the_candidates_after_the_precise_hits(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("A"), naming())
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
    llm = ScriptedLlm(submit("A"), naming())
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


def test_rank_references_become_names_while_streaming_and_a_bad_rank_is_caught(products: list[Product]) -> None:
    llm = ScriptedLlm(submit("B", "A"), "For shirts, #1 is blue and #2 is a casual choice.")
    events, result = run(make_pipeline(products, llm)[0], TurnRequest(text="shirts", top_k=3))
    first, second = (i.product.title for i in result.items[:2])
    assert result.explanation == f"For shirts, {first} is blue and {second} is a casual choice."
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == result.explanation
    assert result.degraded == []
    past = ScriptedLlm(submit("A"), "Take #1 and #7.")
    _, result = run(make_pipeline(products, past)[0], TurnRequest(text="shirts", top_k=3))
    assert [d.part for d in result.degraded] == ["explainer"] and "#7" in result.degraded[0].reason


def test_mmr_over_the_ranking_spreads_near_duplicates(products: list[Product]) -> None:
    import numpy as np

    pipeline, _ = make_pipeline(products, ScriptedLlm(submit(*"ABCDEFGHIJ"), naming()))
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
