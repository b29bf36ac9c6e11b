"""Ranking cases and conversations: SYNTHETIC buyers × Tandem's real retrieval, in the ranker's chat format.

A :class:`RankingCase` is one buyer's request with the candidates retrieval returned and the
graded relevance of each candidate (3 = the product the buyer wants next, 2 = same category
path and colour as it, 1 = same category path, 0 = other). Two protocols:

- **full list**: the first ``n_candidates`` hits of hierarchical retrieval, in retrieval order;
- **one of 20** (the RecLM-eval protocol): the wanted product plus 19 other products of the
  retrieval pool, in retrieval order, for buyers whose wanted product retrieval found.

The ranker sees the buyer (profile, recent orders), the request and the candidates, and
answers with one ``submit_ranking`` call; :func:`sft_conversation` writes the teacher
answer (expected relevance under the posterior of what the buyer wants), sometimes after a
``get_products`` look-up of candidates, so the model learns when a tool helps.

Candidates carry short candidate ids (``A``, ``B``, …), see :mod:`rag.ranker_format`.

Example:
    >>> prompt = ranker_case_prompt(buyer, candidates, catalogue)  # doctest: +SKIP
    >>> prompt.messages[1]["content"].startswith("Buyer:")  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from finetune.buyers import Buyer, CatalogueCodes, buyer_utility, query_likelihood
from rag.ranker_format import (
    RankerPrompt,
    describe_product,
    handles,
    ranker_prompt,
    ranker_request_line,
)
from retrieval.catalogue import Catalogue, Product

__all__ = [
    "Protocol",
    "RankingCase",
    "graded_relevance",
    "make_case",
    "ranker_case_prompt",
    "request_text",
    "sft_conversation",
    "target_posterior",
    "teacher_ranking",
]

Protocol = Literal["full_list", "one_of_20"]
HISTORY_SHOWN = 6
_LIKELIHOOD_FLOOR = 1e-6  # far below any wording the request model gives (0.35 x 0.5 x 0.7 = 0.12 at least)


@dataclass(frozen=True)
class RankingCase:
    """One buyer, the candidates in retrieval order, and their graded relevance."""

    buyer: Buyer
    candidates: tuple[str, ...]
    relevance: dict[str, int] = field(default_factory=dict)
    protocol: Protocol = "full_list"


def request_text(buyer: Buyer) -> str:
    return ranker_request_line(buyer.query_text, buyer.query_image is not None)


def ranker_case_prompt(
    buyer: Buyer, candidates: Sequence[Product], catalogue: Catalogue, *, at_least: int = 10
) -> RankerPrompt:
    """A SYNTHETIC buyer's ranker request, built as serving builds it (:func:`rag.ranker_format.ranker_prompt`)."""
    history = [p for p in (catalogue.get(h) for h in buyer.history[-HISTORY_SHOWN:]) if p is not None]
    return ranker_prompt(buyer.profile.describe(), history, request_text(buyer), candidates, at_least=at_least)


def graded_relevance(target: Product, product: Product) -> int:
    if product.product_id == target.product_id:
        return 3
    if product.category != target.category:
        return 0
    same_colour = product.attributes.get("base_colour") == target.attributes.get("base_colour")
    return 2 if same_colour else 1


def make_case(
    buyer: Buyer,
    hits: Sequence[str],
    catalogue: Catalogue,
    *,
    protocol: Protocol,
    n_candidates: int = 20,
    rng: random.Random | None = None,
) -> RankingCase | None:
    """Build a case from retrieval hits (best first); None when one-of-20 cannot be formed (target not found)."""
    target = catalogue.get(buyer.target)
    if target is None:
        return None
    if protocol == "full_list":
        candidates = list(hits[:n_candidates])
    else:
        if buyer.target not in hits:
            return None
        others = [h for h in hits if h != buyer.target]
        if len(others) < n_candidates - 1:
            return None
        rng = rng or random.Random(buyer.buyer_id)
        chosen = set(rng.sample(others, n_candidates - 1)) | {buyer.target}
        candidates = [h for h in hits if h in chosen]  # retrieval order kept
    relevance = {}
    for pid in candidates:
        product = catalogue.get(pid)
        relevance[pid] = graded_relevance(target, product) if product is not None else 0
    if protocol == "one_of_20":
        relevance = {pid: int(pid == buyer.target) for pid in candidates}
    return RankingCase(buyer, tuple(candidates), relevance, protocol)


def target_posterior(case: RankingCase, codes: CatalogueCodes, catalogue: Catalogue) -> np.ndarray:
    """P(candidate is the product the buyer wants | the request's words, the buyer's preferences), per candidate.

    Bayes' rule over the candidates with the SYNTHETIC generator's own two parts: the buyer's
    utility (its preferences, which its profile and orders reveal to a reader) as the prior and
    :func:`~finetune.buyers.query_likelihood` (how likely those words are, were this the
    product wanted). A candidate the words cannot describe keeps a tiny floor, so a list with
    none that fits is still ordered by preference.
    """
    products = [catalogue.get(c) for c in case.candidates]
    gender = case.buyer.profile.gender
    likelihood = np.array([query_likelihood(case.buyer.query_text, p, gender) if p is not None else 0.0
                           for p in products])  # fmt: skip
    logp = buyer_utility(case.buyer, codes, case.candidates) + np.log(np.maximum(likelihood, _LIKELIHOOD_FLOOR))
    p = np.exp(logp - logp.max())
    posterior: np.ndarray = p / p.sum()
    return posterior


def teacher_ranking(case: RankingCase, codes: CatalogueCodes, catalogue: Catalogue) -> list[str]:
    """The answer SFT teaches: candidates by :func:`target_posterior`, ties by retrieval order.

    Both of its parts are readable from the prompt (the request's words against each candidate
    line; the buyer's preferences through its profile and orders), though the next purchase
    itself is not: it is one draw from them. On the 579 SYNTHETIC test buyers' cases (current
    retrieval), a perfect imitator would gain +43.5 % NDCG@10 over retrieval order on 1-of-20
    and +6.5 % on the full list (paired SE 6.6 and 0.8 points), against +44.1 % / +5.8 % for the
    rule it replaced (request-word matches first, then utility). Ranking by expected relevance
    grade instead gained no more (+42.5 % / +6.0 %).
    """
    posterior = target_posterior(case, codes, catalogue)
    order = sorted(range(len(case.candidates)), key=lambda i: (-posterior[i], i))
    return [case.candidates[i] for i in order]


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def sft_conversation(
    case: RankingCase,
    catalogue: Catalogue,
    codes: CatalogueCodes,
    *,
    top_n: int = 10,
    lookup_share: float = 0.2,
    shuffle: bool = False,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """A TRL conversational example ``{"messages", "tools"}`` ending in one ``submit_ranking`` call.

    Some conversations first look up the leading candidates with ``get_products`` (titles and
    every attribute), as a model unsure between close candidates would.

    With ``shuffle`` the candidates are shown in a random order. In retrieval order the best
    candidate is ``A`` half the time, and a ranker learns that prior instead of reading the
    candidates (measured: first-id probability 0.55 on ``A`` whatever the lines said, and a
    ranking equal to retrieval order); in a random order only the lines tell. The answer is
    ranked before the shuffle, so ties break by retrieval order, not by the shown position.
    """
    rng = rng or random.Random(case.buyer.buyer_id)
    # Ranked before the shuffle, so ties (most top groups: same request match and preference) break by
    # retrieval order, which the model cannot see in a shuffled list. Broken by the shown order, 41 % of
    # first picks were ``A`` and the ranker learned that prior (P(A) = 0.40, content-blind).
    best = teacher_ranking(case, codes, catalogue)[:top_n]
    if shuffle:
        case = replace(case, candidates=tuple(rng.sample(case.candidates, len(case.candidates))))
    products = [p for p in (catalogue.get(c) for c in case.candidates) if p is not None]
    prompt = ranker_case_prompt(case.buyer, products, catalogue, at_least=top_n)
    messages = prompt.messages
    to_handle = dict(zip(case.candidates, handles(len(case.candidates)), strict=True))
    if rng.random() < lookup_share:
        looked = list(to_handle.values())[:3]
        facts = [describe_product(p, h) for h, p in zip(looked, products, strict=False)]
        messages.append({"role": "assistant", "content": "", "tool_calls": [_call("get_products", {"ids": looked})]})
        messages.append({"role": "tool", "name": "get_products", "content": json.dumps(facts, ensure_ascii=False)})
    ranking = [to_handle[pid] for pid in best]
    messages.append({"role": "assistant", "content": "", "tool_calls": [_call("submit_ranking", {"ids": ranking})]})
    return {"messages": messages, "tools": prompt.tools}
