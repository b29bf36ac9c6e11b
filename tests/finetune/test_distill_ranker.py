"""Listwise distillation of the ranker on a tiny base built here: slot targets, the shared-prefix pass, resume."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import finetune.distill_ranker as distill_module
from finetune.buyers import BuyerConfig, CatalogueCodes, generate_buyers
from finetune.distill_ranker import (
    DistillExample,
    _loss,
    distill,
    distill_example,
    lesson_example,
    prefix_cache,
    shared_prefix,
    slot_targets,
)
from finetune.ranker_warmup import reading_lesson, reading_types
from finetune.ranking_data import RankingCase, make_case, target_posterior, teacher_ranking
from finetune.tiny_lm import build_tiny_chat_model
from rag.ranker_format import handles
from retrieval.catalogue import Catalogue, load_catalogue

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def catalogue(fashion_dir: Path) -> Catalogue:
    return load_catalogue(fashion_dir, limit=1500, check_images=False)


@pytest.fixture(scope="module")
def cases(catalogue: Catalogue) -> list[RankingCase]:
    rng = random.Random(0)
    out = []
    for buyer in generate_buyers(catalogue, BuyerConfig(n_buyers=8, seed=3)):
        others = [p.product_id for p in rng.sample(catalogue.products, 30) if p.product_id != buyer.target]
        hits = others[:19]
        hits.insert(rng.randrange(20), buyer.target)
        case = make_case(buyer, hits, catalogue, protocol="full_list")
        assert case is not None
        out.append(case)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "base", hidden_size=32, num_layers=2,
                                 vocab_size=600)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(tiny: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


@pytest.fixture(scope="module")
def examples(cases: list[RankingCase], catalogue: Catalogue, tokenizer: Any) -> list[DistillExample]:
    codes = CatalogueCodes(catalogue.products)
    rng = random.Random(0)
    return [distill_example(c, catalogue, codes, tokenizer, top_n=5, rng=rng) for c in cases]


def _peft(tiny: Path, dropout: float = 0.0) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj", "up_proj"],
                        init_lora_weights="gaussian")  # fmt: skip
    return get_peft_model(model, config)


def test_slot_targets_are_the_posterior_over_candidates_not_yet_listed() -> None:
    posterior = [0.1, 0.4, 0.2, 0.3]
    rows = np.asarray(slot_targets(posterior, [1, 3, 2], 3), dtype=float)
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)
    np.testing.assert_allclose(rows[0], posterior)
    np.testing.assert_allclose(rows[1], [0.1 / 0.6, 0, 0.2 / 0.6, 0.3 / 0.6])
    np.testing.assert_allclose(rows[2], [1 / 3, 0, 2 / 3, 0])


def test_each_slot_target_sits_on_the_teachers_id_token(
    cases: list[RankingCase], catalogue: Catalogue, tokenizer: Any, examples: list[DistillExample]
) -> None:
    codes = CatalogueCodes(catalogue.products)
    for case, example in zip(cases, examples, strict=True):
        assert len(example.slots) == 5
        answer = tokenizer.decode(list(example.input_ids[example.answer_start :]))
        assert answer.lstrip().startswith("<tool_call>") and "submit_ranking" in answer
        id_token = {int(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(h))[0]): h for h in handles(20)}
        taught = [id_token[example.input_ids[position]] for position, _, _ in example.slots]
        assert len(set(taught)) == 5  # five different candidates, each named by its shown id
        posterior = target_posterior(case, codes, catalogue)
        best = teacher_ranking(case, codes, catalogue)[:5]
        listed: set[str] = set()
        for (position, tokens, probs), pid in zip(example.slots, best, strict=True):
            assert example.answer_start <= position < len(example.input_ids)
            assert abs(sum(probs) - 1) < 1e-9
            # The mass on the taught id is that candidate's share of the posterior left after the listed ones.
            left = sum(posterior[i] for i, c in enumerate(case.candidates) if c not in listed)
            share = dict(zip(tokens, probs, strict=True))[example.input_ids[position]]
            assert share == pytest.approx(posterior[case.candidates.index(pid)] / left)
            assert len(tokens) == 20 - len(listed)
            listed.add(pid)


def test_the_shared_prefix_pass_gives_the_plain_forward_loss(tiny: Path, examples: list[DistillExample]) -> None:
    model = _peft(tiny)
    model.eval()
    n = shared_prefix(examples)
    assert 0 < n < min(e.answer_start for e in examples)
    assert all(e.input_ids[:n] == examples[0].input_ids[:n] for e in examples)
    assert len({e.input_ids[n] for e in examples}) > 1  # the longest: one more token differs somewhere
    cache = prefix_cache(model, examples[0].input_ids[:n])
    with torch.no_grad():
        for example in examples[:3]:
            plain, shared = _loss(model, example), _loss(model, example, (n, cache))
            assert float(shared) == pytest.approx(float(plain), rel=1e-5)


def _slot_kl(model: Any, examples: list[DistillExample], *, shifted: bool = False) -> float:
    """Mean KL(target || model) at the first slot, the model's softmax taken over the target's candidate-id
    tokens only (what guided decoding chooses between).

    ``shifted``: against the same probabilities moved one candidate on, a target of the same
    shape that the teacher did not give.
    """
    inner = model.get_base_model()
    total = 0.0
    with torch.no_grad():
        for e in examples:
            position, tokens, probs = e.slots[0]
            logits = inner(input_ids=torch.tensor([e.input_ids[:position]])).logits[0, -1]
            logp = torch.log_softmax(logits[list(tokens)], -1).numpy()
            q = np.roll(np.array(probs), 1) if shifted else np.array(probs)
            total += float(np.sum(q * (np.log(np.maximum(q, 1e-12)) - logp)))
    return total / len(examples)


def test_distillation_moves_the_first_slot_towards_the_teacher(tiny: Path, examples: list[DistillExample]) -> None:
    model = _peft(tiny)
    before = _slot_kl(model, examples[:4])
    fit = distill(model, examples[:4], learning_rate=2e-2, accumulation=2, max_steps=80)
    assert (fit.steps, fit.planned_steps) == (80, 80)
    assert fit.losses[-1][1] < fit.losses[0][1]
    after = _slot_kl(model, examples[:4])
    assert after < 0.7 * before
    assert after < 0.8 * _slot_kl(model, examples[:4], shifted=True)  # it learned *these* probabilities


def test_a_budget_stop_resumes_to_the_same_adapter(tiny: Path, examples: list[DistillExample], tmp_path: Path) -> None:
    from peft import get_peft_model_state_dict

    ticks = iter(range(1000))
    clock = lambda: float(next(ticks))  # noqa: E731 - one second a call: the budget below buys two steps
    straight = _peft(tiny)
    distill(straight, examples, learning_rate=1e-2, accumulation=2, max_steps=4)
    interrupted = _peft(tiny)
    first = distill(interrupted, examples, learning_rate=1e-2, accumulation=2, max_steps=4, budget_s=1.5,
                    checkpoint_dir=tmp_path, save_steps=100, clock=clock)  # fmt: skip
    assert (first.steps, first.planned_steps) == (2, 4)
    assert (tmp_path / "distill_state.pt").is_file()  # saved at the stop, not only every save_steps
    saved = float(torch.load(tmp_path / "distill_state.pt", weights_only=False)["seconds"])
    assert saved >= 2  # one tick a call: the stopped run's training time is in its checkpoint
    resumed = _peft(tiny)  # a fresh process: nothing but the checkpoint carries over
    second = distill(resumed, examples, learning_rate=1e-2, accumulation=2, max_steps=4, checkpoint_dir=tmp_path,
                     clock=clock)  # fmt: skip
    assert (second.resumed_from, second.steps) == (2, 4)
    assert [s for s, _ in second.losses] == [1, 2, 3, 4]
    assert second.seconds > saved  # the interrupted run's time, plus this run's
    want, got = get_peft_model_state_dict(straight), get_peft_model_state_dict(resumed)
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor)


def test_a_reading_lesson_teaches_the_matching_line_first_and_no_order_after(
    catalogue: Catalogue, tokenizer: Any
) -> None:
    rng = random.Random(0)
    types = reading_types(catalogue, min_products=10)
    id_token = {int(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(h))[0]): h for h in handles(20)}
    for _ in range(5):
        lesson = reading_lesson(catalogue, rng, by_type=types)
        example = lesson_example(lesson, tokenizer, top_n=5, rng=rng)
        text = tokenizer.decode(list(example.input_ids[: example.answer_start]))
        answer_id = handles(20)[lesson.answer]
        line = next(line for line in text.splitlines() if line.endswith(f"[{answer_id}]"))
        product = lesson.candidates[lesson.answer]
        kind, colour = product.category[-1].lower(), product.attributes["base_colour"].lower()
        assert lesson.request == f"{colour} {kind}"
        assert line.startswith(f"{kind} | {colour} | ")  # the line the request describes ends with the taught id
        ((position, tokens, probs),) = example.slots  # only the first id is scored
        assert id_token[example.input_ids[position]] == answer_id
        assert sorted(tokens) == sorted(id_token)  # chosen among all 20 ids
        assert dict(zip(tokens, probs, strict=True))[example.input_ids[position]] == 1.0
        # The ids after it are in no loss, the format tokens between them are.
        later = [i for i in range(example.answer_start, len(example.input_ids)) if example.input_ids[i] in id_token
                 and i > position]  # fmt: skip
        assert sorted(example.unscored) == later[:4]


def test_lessons_come_first_then_the_cases_shuffled(
    tiny: Path, catalogue: Catalogue, tokenizer: Any, examples: list[DistillExample], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(2)
    types = reading_types(catalogue, min_products=10)
    lessons = [lesson_example(reading_lesson(catalogue, rng, by_type=types), tokenizer, top_n=5, rng=rng)
               for _ in range(4)]  # fmt: skip
    seen: list[int] = []
    real_loss = distill_module._loss

    def spy(model: Any, example: DistillExample, prefix: Any = None) -> Any:
        seen.append(id(example))
        return real_loss(model, example, prefix)

    monkeypatch.setattr(distill_module, "_loss", spy)
    data = [*lessons, *examples]
    fit = distill(_peft(tiny), data, learning_rate=1e-3, accumulation=2, lessons=len(lessons))
    assert fit.planned_steps == len(data) // 2
    assert seen[:4] == [id(e) for e in lessons]
    assert sorted(seen[4:]) == sorted(id(e) for e in examples)  # each case once, in the one epoch
    assert seen[4:] != [id(e) for e in examples]  # shuffled
