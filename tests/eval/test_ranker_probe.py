"""The first-id probe: it reads the slot the ranker was trained to fill, and tells content from position."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from eval.ranker_probe import FIRST_SLOT, first_slot_logprobs, probe_scores
from finetune.buyers import Buyer, BuyerProfile
from finetune.ranking_data import RankingCase, ranker_case_prompt
from rag.ranker_format import handles, ranker_tools
from retrieval.catalogue import load_catalogue

CANDS = tuple(f"p{i}" for i in range(20))
PRIOR = -np.log(np.arange(1, 21))  # a strong taste for the first ids, as a ranker that copies the list has


def _buyer(i: int) -> Buyer:
    return Buyer(f"b{i}", BuyerProfile("boutique", "Western Europe", "25-34", None), (), "t", "red shirts", None,
                 "test")  # fmt: skip


def _cases(n: int, seed: int = 0) -> list[RankingCase]:
    rng = random.Random(seed)
    targets = [rng.randrange(20) for _ in range(n)]
    return [RankingCase(_buyer(i), CANDS, {c: int(j == t) for j, c in enumerate(CANDS)}, "one_of_20")
            for i, t in enumerate(targets)]  # fmt: skip


def test_position_debiasing_keeps_content_and_exposes_a_content_blind_model() -> None:
    cases = _cases(2000)
    rng = np.random.default_rng(0)
    target = [np.array([c.relevance[p] for p in CANDS], dtype=float) for c in cases]
    reading = [PRIOR + 3.0 * t + rng.normal(0, 0.1, 20) for t in target]  # content on top of the position bias
    blind = [PRIOR + rng.normal(0, 0.1, 20) for _ in cases]  # the same bias, nothing about the candidates
    read, ignore = probe_scores(cases, reading), probe_scores(cases, blind)
    assert read["position_debiased"] == pytest.approx(1.0) and read["verbalizer"] < read["position_debiased"]
    assert ignore["position_debiased"] == pytest.approx(0.227, abs=0.02)  # a random order's NDCG@10 on 1 of 20
    assert ignore["verbalizer"] == pytest.approx(ignore["retrieval"], abs=0.02)  # it ranks by position, i.e. as given
    assert read["position_prior"][:2] == pytest.approx([0.15, -0.54], abs=0.02) and read["cases"] == 2000


def test_the_probe_reads_the_slot_a_trained_ranking_call_fills(tmp_path: Path, fashion_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.tiny_lm import build_tiny_chat_model

    folder = build_tiny_chat_model(tmp_path / "tiny")
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    catalogue = load_catalogue(fashion_dir, limit=40, check_images=False)
    products = catalogue.products[:12]
    case = RankingCase(_buyer(0), tuple(p.product_id for p in products), {}, "full_list")
    rows = first_slot_logprobs(model, tokenizer, [case], catalogue)
    assert len(rows[0]) == 12 and all(v < 0 for v in rows[0])
    # The prompt is what training renders up to the first id; the token read is the one training puts there.
    call = {"type": "function", "function": {"name": "submit_ranking", "arguments": {"ids": ["C", "A"]}}}
    messages = [
        *ranker_case_prompt(case.buyer, products, catalogue).messages,
        {"role": "assistant", "content": "", "tool_calls": [call]},
    ]
    trained = tokenizer.apply_chat_template(messages, tools=ranker_tools(12), tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tools=ranker_tools(12), add_generation_prompt=True,
                                           tokenize=False) + FIRST_SLOT  # fmt: skip
    assert trained.startswith(prompt)
    trained_ids = tokenizer(trained, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert trained_ids[: len(prompt_ids)] == prompt_ids
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt_ids])).logits[0, -1]
    c_token = trained_ids[len(prompt_ids)]
    assert rows[0][handles(12).index("C")] == pytest.approx(float(torch.log_softmax(logits, -1)[c_token]), abs=1e-5)
