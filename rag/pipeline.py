"""One conversation turn: terms → retrieval → LoRA ranker with tools → validation → streamed explanation.

Every LLM call goes through the injected :class:`llms.client.ChatClient` (in production, the LLM
dispatcher: bounded queue, balancing, failover). The turn degrades instead of failing: a
ranker that is down, slow or answers garbage leaves retrieval order (flagged ``ranker``); an
explainer that fails, or names a product outside the ranking, leaves a plain sentence
(flagged ``explainer``). Only retrieval failing fails the turn, since without candidates there
is nothing to show.

Events, in order: :class:`CandidatesEvent`, :class:`RankingEvent`, :class:`TokenEvent` …
(with a :class:`ReviseEvent` where a sentence shown as it was written failed its check at
its end), :class:`DoneEvent` (the whole turn).

Example:
    >>> pipeline = Pipeline(search, products, llm, PipelineConfig())  # doctest: +SKIP
    >>> async for event in pipeline.run(TurnRequest(text="navy shirts for men")):  # doctest: +SKIP
    ...     print(type(event).__name__)
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import numpy as np

from llms.client import ChatClient
from rag.cold_start import cold_start_payload, parse_topics
from rag.diversity import mmr_order
from rag.errors import InvalidTurnError, RetrievalUnavailableError
from rag.explainer_prompt import expand_references, explainer_messages, record_sentence, sentence_start
from rag.explanation_check import ExplanationChecker
from rag.rank_fusion import fuse_rankings
from rag.ranker_format import HANDLES, ranker_prompt, ranker_request_line
from rag.ranker_tools import RankerToolbox, ranker_completion, run_ranker
from rag.sentence_stream import SentenceStream
from rag.session import MemorySessionStore, Session, SessionStore, Turn
from rag.terms import TermVocabulary, TurnTerms
from rag.turn import (
    BuyerContext,
    CandidatesEvent,
    Degradation,
    DoneEvent,
    Lookup,
    PipelineConfig,
    RankedProduct,
    RankingEvent,
    ReviseEvent,
    Scored,
    Search,
    TokenEvent,
    TurnEvent,
    TurnModels,
    TurnRequest,
    TurnResult,
    Vectors,
)
from rag.validation import validate_ranking
from retrieval.catalogue import Product
from retrieval.store import SearchFilter

__all__ = ["Pipeline"]


class EmptySentenceError(Exception):
    """The explainer answered with no words."""


def _reason(product: Product, terms: TurnTerms, history: Sequence[Product]) -> str:
    """A short, checkable reason for a card: the request facets it matches, and past orders like it."""
    matched = []
    if terms.kind and product.category[-1].lower() == terms.kind:
        matched.append(product.category[-1])
    colour = product.attributes.get("base_colour", "")
    if terms.colour and colour.lower() == terms.colour:
        matched.append(colour)
    usage = product.attributes.get("usage", "")
    if terms.usage and usage.lower() == terms.usage:
        matched.append(usage)
    parts = [f"matches {', '.join(matched)}"] if matched else []
    if any(h.category == product.category for h in history):
        parts.append("like past orders")
    return "; ".join(parts) or "close to the request"


class Pipeline:
    """Runs turns; one instance per service, shared by all sessions.

    Example:
        >>> result = await pipeline.answer(TurnRequest(text="red kurtas"))  # doctest: +SKIP
    """

    def __init__(
        self,
        search: Search,
        lookup: Lookup,
        llm: ChatClient,
        config: PipelineConfig | None = None,
        *,
        models: TurnModels | None = None,
        vocabulary: TermVocabulary,
        checker: ExplanationChecker,
        sessions: SessionStore | None = None,
        attribute_values: Mapping[str, Sequence[str]] | None = None,
        vectors: Vectors | None = None,
    ) -> None:
        self.search = search
        self.lookup = lookup
        self.llm = llm
        self.config = config or PipelineConfig()
        self.models = models or TurnModels()
        self.vocabulary = vocabulary
        self.checker = checker
        # `is None`, not `or`: an empty in-process store is falsy (it has a length) and must still be used.
        self.sessions: SessionStore = sessions if sessions is not None else MemorySessionStore()
        self.attribute_values = attribute_values or {}
        self.vectors = vectors

    async def answer(self, request: TurnRequest) -> TurnResult:
        """The whole turn, not streamed."""
        async for event in self.run(request):
            if isinstance(event, DoneEvent):
                return event.result
        raise RuntimeError("a turn ended without its result")  # pragma: no cover - run() always ends with Done

    async def run(self, request: TurnRequest) -> AsyncIterator[TurnEvent]:
        """The turn as events; the session is held for its duration, so turns of one session never interleave.

        The store loads the session (and locks it: in this process, or in Redis across replicas) before the
        turn reads it; the turn saves it before its last event, so a consumer that stops at ``done`` loses nothing.
        """
        text = (request.text or "").strip()
        if not text and request.image is None:
            raise InvalidTurnError("a message needs text, a photo, or both")
        async with self.sessions.turn(request.session_id, owner=request.owner) as session:
            async for event in self._turn(session, text, request):
                yield event

    async def _turn(self, session: Session, text: str, request: TurnRequest) -> AsyncIterator[TurnEvent]:
        cfg = self.config
        t0 = time.perf_counter()
        timing: dict[str, float] = {}
        degraded: list[Degradation] = []
        # OpenAI's `user` on every LLM call of the session: the dispatcher's affinity policy keeps the session on
        # the worker whose prefix cache holds it. A hash, so the session id itself never reaches a worker's logs.
        user = hashlib.sha256(session.session_id.encode()).hexdigest()[:16]
        last = self.lookup(session.last_products[:1])
        shown_brand = TermVocabulary.brand_of(next(iter(last.values()))) if last else None
        terms = self.vocabulary.update(session.terms, text, shown_brand=shown_brand) if text else (
            session.terms or TurnTerms())  # fmt: skip
        query = terms.query() or text

        buyer = request.buyer or BuyerContext()
        history_map = self.lookup(buyer.history[-cfg.history_shown :])
        history = [history_map[h] for h in buyer.history[-cfg.history_shown :] if h in history_map]
        topics: list[str] = []
        if request.buyer is not None and not buyer.history and self._up("cold_start", self.models.explainer, degraded):
            topics = await self._cold_start(buyer, query, degraded, user)

        try:
            # Only asked for when wanted: a Search without the keyword still serves every other turn.
            more = {"explore": request.explore} if request.explore > 0 else {}
            hits = await self.search(query or None, request.image, cfg.pool, None, **more)
            for topic in topics:
                hits += await self.search(topic, None, max(3, cfg.pool // 8), None)
        except Exception as exc:
            raise RetrievalUnavailableError(f"retrieval failed: {exc}") from exc
        seen: set[str] = set()
        pool: list[Scored] = []
        for hit in hits:
            pid = hit.product.product_id
            if pid in seen or terms.excludes(hit.product) or (pid in session.shown and not terms.repeat_shown):
                continue
            seen.add(pid)
            pool.append(hit)
        n = min(request.candidates or cfg.ranker_candidates, len(HANDLES))
        # The explored tail keeps its places after the precise hits, as the diversity experiment measured it.
        tail = [h for h in pool if h.explored][: n - 1]
        candidates = [h for h in pool if not h.explored][: n - len(tail)] + tail
        timing["retrieval"] = round((time.perf_counter() - t0) * 1000, 3)
        yield CandidatesEvent(session.session_id, query, candidates)

        t1 = time.perf_counter()
        if self._up("ranker", self.models.ranker, degraded):
            ranked_ids, ranker_info = await self._rank(candidates, buyer, history, topics, query, request, degraded,
                                                       user)  # fmt: skip
        else:
            ranked_ids, ranker_info = [c.product.product_id for c in candidates], {"model": self.models.ranker}
        if request.mmr_lambda is not None and self.vectors is not None and len(ranked_ids) > 1:
            ranked_ids = await self._mmr(ranked_ids, request.mmr_lambda, request.top_k)
        by_id = {c.product.product_id: c for c in candidates}
        items = [
            RankedProduct(by_id[pid].product, by_id[pid].score, _reason(by_id[pid].product, terms, history))
            for pid in ranked_ids[: request.top_k]
        ]
        timing["ranking"] = round((time.perf_counter() - t1) * 1000, 3)
        timing["first_card"] = round((time.perf_counter() - t0) * 1000, 3)
        yield RankingEvent(items, list(degraded))

        t2 = time.perf_counter()
        explanation = ""
        explainer_info: dict[str, Any] = {}
        if items and not self._up("explainer", self.models.explainer, degraded):
            explanation = _record_explanation([i.product for i in items[: cfg.explained]])
            explainer_info = {"sentences": min(len(items), cfg.explained), "model_sentences": 0}
        elif items:
            async for piece in self._explain(text or query, items, degraded, timing, t0, explainer_info, user):
                if isinstance(piece, str):
                    explanation = piece
                else:
                    yield piece
        else:
            explanation = "Nothing new matches this request; try other words or ask to see earlier products again."
        timing["explanation"] = round((time.perf_counter() - t2) * 1000, 3)
        timing["total"] = round((time.perf_counter() - t0) * 1000, 3)
        session.record(Turn(text, request.image is not None, terms, tuple(i.product.product_id for i in items)))
        await self.sessions.save(session)
        yield DoneEvent(TurnResult(session.session_id, query, items, explanation, degraded, timing, ranker_info,
                                   explainer_info))  # fmt: skip

    def _up(self, part: str, model: str, degraded: list[Degradation]) -> bool:
        """Whether ``model`` is served now; if not, the part is skipped at once (no wait on a worker still starting)."""
        if self.llm.serves(model):
            return True
        degraded.append(Degradation(part, f"the LLM worker is not ready (no healthy worker serves {model!r} yet)"))
        return False

    async def _mmr(self, ranked_ids: list[str], lam: float, k: int) -> list[str]:
        """MMR over the validated ranking: its order is the relevance, image vectors the similarity."""
        assert self.vectors is not None
        found = await self.vectors(ranked_ids)
        if len(found) < len(ranked_ids):
            return ranked_ids  # a product without a stored vector: keep the ranker's order
        n = len(ranked_ids)
        order = mmr_order([1.0 - i / n for i in range(n)], np.vstack([found[i] for i in ranked_ids]), lam=lam, k=k)
        return [ranked_ids[i] for i in order]

    async def _cold_start(self, buyer: BuyerContext, query: str, degraded: list[Degradation], user: str) -> list[str]:
        """A buyer without history: the base model lists interest topics (JSON) to retrieve on as well."""
        n = self.config.cold_start_topics
        payload = cold_start_payload(self.models.explainer, buyer.profile or "unknown business", query, n)
        payload["user"] = user
        try:
            completion = await self.llm.complete(payload, deadline_s=self.config.explainer_deadline_s)
            topics = parse_topics(str(completion.message.get("content") or ""), n)
        except Exception as exc:  # any failure of an optional step degrades it
            degraded.append(Degradation("cold_start", f"{type(exc).__name__}: {exc}"[:200]))
            return []
        if topics is None:
            degraded.append(Degradation("cold_start", "the model did not answer a JSON list of topics"))
            return []
        return topics

    async def _rank(
        self,
        candidates: Sequence[Scored],
        buyer: BuyerContext,
        history: Sequence[Product],
        topics: Sequence[str],
        query: str,
        request: TurnRequest,
        degraded: list[Degradation],
        user: str,
    ) -> tuple[list[str], dict[str, Any]]:
        ids = [c.product.product_id for c in candidates]
        info: dict[str, Any] = {"model": self.models.ranker, "candidates": len(ids)}
        if len(ids) < 2:
            return ids, info
        products = [c.product for c in candidates]
        line = ranker_request_line(query, request.image is not None)
        prompt = ranker_prompt(
            buyer.profile or "not given", history, line, products, interests=topics, at_least=request.top_k
        )
        complete = ranker_completion(
            self.llm,
            self.models.ranker,
            prompt.tools,
            max_tokens=self.config.ranker_max_tokens,
            sampling=request.sampling.payload(),
            deadline_s=self.config.ranker_deadline_s,
            user=user,
        )

        async def search(q: str, k: int, search_filter: SearchFilter | None) -> list[Product]:
            return [s.product for s in await self.search(q, None, k, search_filter)]

        toolbox = RankerToolbox(_Products(products, self.lookup), products, search=search,
                                attribute_values=self.attribute_values)  # fmt: skip
        try:
            outcome = await asyncio.wait_for(
                run_ranker(complete, prompt.messages, toolbox, max_rounds=self.config.max_tool_rounds),
                timeout=self.config.ranker_deadline_s,
            )
        except Exception as exc:
            degraded.append(Degradation("ranker", f"{type(exc).__name__}: {exc}"[:200] or type(exc).__name__))
            info["error"] = type(exc).__name__
            return ids, info
        info["tool_calls"] = outcome.tool_calls
        if outcome.ids is None:
            degraded.append(Degradation("ranker", "no valid submit_ranking call; retrieval order used"))
            info["raw"] = outcome.raw[:300]
            return ids, info
        checked = validate_ranking(outcome.ids, ids)
        info.update(returned=checked.returned, hallucinated=checked.hallucinated, duplicates=checked.duplicates,
                    filled=checked.filled)  # fmt: skip
        if checked.returned == checked.hallucinated + checked.duplicates:
            degraded.append(Degradation("ranker", "the ranking named no candidate; retrieval order used"))
            return checked.ranking, info
        if self.config.ranker_fusion < 1.0:
            info["fusion"] = self.config.ranker_fusion
            return fuse_rankings(checked.ranking, ids, weight=self.config.ranker_fusion), info
        return checked.ranking, info

    async def _explain(
        self,
        request_text: str,
        items: Sequence[RankedProduct],
        degraded: list[Degradation],
        timing: dict[str, float],
        t0: float,
        info: dict[str, Any],
        user: str,
    ) -> AsyncIterator[TokenEvent | ReviseEvent | str]:
        """One checked sentence per explained product, in rank order, each shown as it is written; then the whole text.

        The first sentence is what the buyer waits for, so it is asked alone and the others once
        it is being written: a worker that batches statically (the embedded one) then decodes it
        in a batch of one instead of three, and the others together after it (sharing their
        prompt's prefix); a server that batches continuously (vLLM) takes them in at once anyway.
        Each sentence is shown word by word, but only as far as the check passes
        (:class:`~rag.sentence_stream.SentenceStream`), so nothing false is ever shown, not even
        for a moment of a stream. A finished sentence that fails the check (it names a product
        outside the ranking, or claims an attribute its record contradicts) is replaced by the
        plain sentence built from the record; if part of it was already shown, a
        :class:`ReviseEvent` takes that part back.
        """
        ranked = [i.product for i in items[: self.config.explained]]
        drafts = [_Draft() for _ in ranked]
        tasks = await self._ask_sentences(request_text, ranked, drafts, user)
        shown: list[str] = []
        streamed = ""  # the explanation as the buyer sees it now
        replaced: list[str] = []
        failed: list[str] = []
        raw: list[str | None] = []
        retracted = 0
        try:
            for k, (product, task, draft) in enumerate(zip(ranked, tasks, drafts, strict=True), 1):
                stream = SentenceStream(k, ranked, self.checker, lead=" " if shown else "")
                while self.config.stream_words and not task.done():
                    await draft.wait(task)
                    if delta := stream.update(draft.text.split("\n", 1)[0]):
                        timing.setdefault("first_token", round((time.perf_counter() - t0) * 1000, 3))
                        streamed += delta
                        yield TokenEvent(delta)
                await asyncio.wait([task])
                sentence = self._checked(task, product, k, ranked, raw, replaced, failed)
                retract, delta = stream.finish(sentence)
                timing.setdefault("first_token", round((time.perf_counter() - t0) * 1000, 3))
                if retract:
                    retracted += 1
                    streamed = streamed[: len(streamed) - retract] + delta
                    yield ReviseEvent(streamed)
                elif delta:
                    streamed += delta
                    yield TokenEvent(delta)
                shown.append(expand_references(sentence, ranked))
        finally:
            for task in tasks:
                task.cancel()
        info.update(sentences=len(shown), model_sentences=len(shown) - len(failed) - len(replaced), raw=raw,
                    replaced=replaced, retracted=retracted)  # fmt: skip
        if failed:
            reason = f"{len(failed)} sentence(s) from the catalogue record: {failed[0]}"
            degraded.append(Degradation("explainer", reason))
        if replaced:
            reason = f"false claims replaced by the catalogue record: {' | '.join(replaced)}"
            degraded.append(Degradation("explainer", reason[:400]))
        yield " ".join(shown)

    def _checked(
        self,
        task: asyncio.Task[str],
        product: Product,
        rank: int,
        ranked: Sequence[Product],
        raw: list[str | None],
        replaced: list[str],
        failed: list[str],
    ) -> str:
        """The finished sentence if it passes the check, else the record's; what happened is noted in the lists."""
        exc = task.exception()
        if exc is not None:  # a failing worker costs this sentence, not the turn
            failed.append(f"{type(exc).__name__}: {exc}"[:160])
            raw.append(None)
            return record_sentence(product, rank)
        sentence = task.result()
        raw.append(sentence)
        check = self.checker.check(sentence, ranked)
        if not check.ok:
            replaced.append(check.reasons()[:200])
            return record_sentence(product, rank)
        return sentence

    async def _ask_sentences(
        self, request_text: str, ranked: Sequence[Product], drafts: Sequence[_Draft], user: str
    ) -> list[asyncio.Task[str]]:
        """One task per sentence: the first at once, the rest once it has started (or ended, or failed)."""
        if not ranked:
            return []
        first = asyncio.create_task(self._sentence(request_text, ranked[0], 1, user, drafts[0]))
        if len(ranked) > 1:
            waiter = asyncio.create_task(drafts[0].started.wait())
            try:
                await asyncio.wait([first, waiter], return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                first.cancel()
                raise
            finally:
                waiter.cancel()
        rest = [
            asyncio.create_task(self._sentence(request_text, p, k, user, draft))
            for k, (p, draft) in enumerate(zip(ranked[1:], drafts[1:], strict=True), 2)
        ]
        return [first, *rest]

    async def _sentence(self, request_text: str, product: Product, rank: int, user: str, draft: _Draft) -> str:
        """The explainer's sentence about one product: the start Tandem wrote, continued to the end of the line."""
        payload = {"model": self.models.explainer, "messages": explainer_messages(request_text, product, rank),
                   "max_tokens": self.config.explainer_max_tokens, "temperature": 0.0, "stop": ["\n"],
                   "continue_final_message": True, "add_generation_prompt": False, "user": user}  # fmt: skip
        async for chunk in self.llm.stream(payload, deadline_s=self.config.explainer_deadline_s):
            draft.add("".join(choice.get("delta", {}).get("content") or "" for choice in chunk.get("choices", [])))
        text = draft.text.split("\n", 1)[0].rstrip()
        if not text.strip():
            raise EmptySentenceError("the explainer wrote nothing")
        return sentence_start(rank) + text


class _Draft:
    """A sentence as the explainer writes it: the text so far; ``started`` once the stream began, ``grew`` on news."""

    def __init__(self) -> None:
        self.text = ""
        self.started = asyncio.Event()
        self.grew = asyncio.Event()

    def add(self, piece: str) -> None:
        self.started.set()
        if piece:
            self.text += piece
            self.grew.set()

    async def wait(self, task: asyncio.Task[str]) -> None:
        """Until the text grows or ``task`` (the sentence's) ends."""
        grew = asyncio.create_task(self.grew.wait())
        try:
            await asyncio.wait([task, grew], return_when=asyncio.FIRST_COMPLETED)
        finally:
            grew.cancel()
        self.grew.clear()


class _Products:
    """The candidates plus the catalogue, as the toolbox's product source."""

    def __init__(self, candidates: Sequence[Product], lookup: Lookup) -> None:
        self._candidates = {p.product_id: p for p in candidates}
        self._lookup = lookup

    def get(self, product_id: str) -> Product | None:
        return self._candidates.get(product_id) or self._lookup([product_id]).get(product_id)


def _record_explanation(ranked: Sequence[Product]) -> str:
    """The explanation built from the records alone (no explainer): one plain sentence per product."""
    return " ".join(expand_references(record_sentence(p, k), ranked) for k, p in enumerate(ranked, 1))
