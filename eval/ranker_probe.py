"""Does the ranker read its candidates? A probe of the first id it would submit.

A ranker that ranks by content puts more probability on the candidate ids whose lines fit the
request and the buyer. One that only learned the *format* puts the same probabilities on the
same positions whatever the candidates are (``A`` first, then ``B``…). The probe reads the
model's distribution over candidate ids at the first slot of ``submit_ranking`` (teacher-forced
prompt, one forward pass per case, as LlamaRec's verbalizer ranks) and scores two rankings of
the candidates with NDCG@10:

- **verbalizer**: by those probabilities, position bias included;
- **position-debiased**: by each candidate's log-probability minus the mean log-probability of its
  position over all cases (contextual calibration). What is left is what the model says about
  *this* candidate: a content-blind model's residuals are noise, and it scores as a random order here.

Example:
    >>> rows = first_slot_logprobs(model, tokenizer, cases, catalogue)  # doctest: +SKIP
    >>> probe_scores(cases, rows)["position_debiased"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from eval.metrics import ndcg_at_k
from finetune.ranking_data import RankingCase, ranker_case_prompt
from rag.ranker_format import handles, ranker_tools
from retrieval.catalogue import Catalogue

__all__ = ["FIRST_SLOT", "first_slot_logprobs", "probe_scores"]

# What the chat template writes before the first id of a submit_ranking call.
FIRST_SLOT = '<tool_call>\n{"name": "submit_ranking", "arguments": {"ids": ["'
K = 10


def _id_token(tokenizer: Any, prefix_ids: list[int], prefix: str, handle: str) -> int:
    ids = tokenizer(prefix + handle, add_special_tokens=False)["input_ids"]
    if ids[: len(prefix_ids)] != prefix_ids or len(ids) == len(prefix_ids):
        raise ValueError(f"the tokenizer merges candidate id {handle!r} into the text before it")
    return int(ids[len(prefix_ids)])


def first_slot_logprobs(
    model: Any,
    tokenizer: Any,
    cases: Sequence[RankingCase],
    catalogue: Catalogue,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[float]]:
    """Per case, the log-probability of each candidate id (in list order) as the first id submitted."""
    import torch  # noqa: PLC0415 - lazy: torch costs seconds of start-up; only this path needs it

    rows: list[list[float]] = []
    for i, case in enumerate(cases):
        products = [p for p in (catalogue.get(c) for c in case.candidates) if p is not None]
        messages = ranker_case_prompt(case.buyer, products, catalogue).messages
        prompt = tokenizer.apply_chat_template(
            messages, tools=ranker_tools(len(products)), add_generation_prompt=True, tokenize=False
        )
        prompt += FIRST_SLOT
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tokens = [_id_token(tokenizer, prompt_ids, prompt, h) for h in handles(len(products))]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt_ids], device=model.device)).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        rows.append([float(logprobs[t]) for t in tokens])
        if progress is not None:
            progress(i + 1, len(cases))
    return rows


def probe_scores(cases: Sequence[RankingCase], rows: Sequence[Sequence[float]]) -> dict[str, Any]:
    """NDCG@10 of retrieval order, the verbalizer and the position-debiased verbalizer; the position prior."""
    width = max((len(r) for r in rows), default=0)
    sums, counts = np.zeros(width), np.zeros(width)
    for row in rows:
        sums[: len(row)] += row
        counts[: len(row)] += 1
    prior = sums / np.maximum(counts, 1)

    def ndcg(order_of: Callable[[np.ndarray], np.ndarray]) -> float:
        values = []
        for case, row in zip(cases, rows, strict=True):
            order = order_of(np.asarray(row, dtype=float))
            values.append(ndcg_at_k([case.candidates[i] for i in order], case.relevance, K))
        return round(float(np.mean(values)), 4) if values else 0.0

    return {
        "retrieval": ndcg(lambda r: np.arange(len(r))),
        "verbalizer": ndcg(lambda r: np.argsort(-r, kind="stable")),
        "position_debiased": ndcg(lambda r: np.argsort(-(r - prior[: len(r)]), kind="stable")),
        "position_prior": [round(float(p), 3) for p in prior],
        "cases": len(rows),
    }
