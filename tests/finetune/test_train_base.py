"""The small base model: its corpus, a tiny training run, the saved folder, and the CLI."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from finetune.base_corpus import CorpusConfig, build_corpus, explanation, request_match_ranking
from finetune.tiny_lm import default_corpus, make_chat_tokenizer
from finetune.train_base import REPORT_FILE, BaseModelConfig, train_base
from retrieval.catalogue import Catalogue, load_catalogue


@pytest.fixture(scope="module")
def catalogue(fashion_dir: Path) -> Catalogue:
    return load_catalogue(fashion_dir, limit=2000, check_images=False)


@pytest.fixture(scope="module")
def trained(catalogue: Catalogue, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base") / "tandem-base-tiny"
    train_base(catalogue, out, BaseModelConfig.tiny())
    return out


def render_with_template() -> object:
    tok = make_chat_tokenizer(default_corpus(), 512)
    return lambda messages, tools: tok.apply_chat_template(messages, tools=tools, tokenize=False)


def test_corpus_has_every_kind_of_document_and_is_seeded(catalogue: Catalogue) -> None:
    config = CorpusConfig(n_products=50, n_search=20, n_explain=20, n_rank=10)
    render = render_with_template()
    docs = build_corpus(catalogue, config, render)  # type: ignore[arg-type]
    assert docs == build_corpus(catalogue, config, render)  # type: ignore[arg-type]
    assert len(docs) == 100
    searches = [d for d in docs if '"name": "search_catalog", "arguments"' in d]
    rankings = [d for d in docs if "<tool_call>" in d and '"name": "submit_ranking", "arguments"' in d]
    explains = [d for d in docs if "Ranking:\n#1 [" in d]
    assert len(searches) == 20 and len(rankings) == 10 and len(explains) == 20
    assert all("<tool_response>" in d for d in searches)


def test_explanations_refer_to_ranked_products_by_rank_with_their_attributes(catalogue: Catalogue) -> None:
    from rag.explainer_prompt import expand_references
    from rag.explanation_check import ExplanationChecker

    checker = ExplanationChecker(catalogue.products)
    for seed in range(20):
        ranked = catalogue.products[seed * 4 : seed * 4 + 4]
        text = explanation("red shirts", ranked, random.Random(seed))
        assert text.count("#1 ") == 1 and "#5" not in text and not any(p.title in text for p in ranked)
        assert ranked[0].attributes["base_colour"].lower() in text.split("#2")[0]
        named = expand_references(text, ranked)
        assert ranked[0].title in named
        assert checker.check(named, ranked).ok


def test_request_match_ranking_puts_matching_candidates_first(catalogue: Catalogue) -> None:
    shirts = [p for p in catalogue.products if p.category[-1] == "Shirts"][:3]
    others = [p for p in catalogue.products if p.category[-1] not in {"Shirts"}][:5]
    ranking = request_match_ranking("looking for shirts", [*others, *shirts])
    assert ranking[:3] == ["F", "G", "H"]  # the shirts, listed sixth to eighth
    assert ranking[3:] == ["A", "B", "C", "D", "E"]  # ties keep the listed order


def test_tiny_training_learns_and_saves_a_hub_style_folder(trained: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = json.loads((trained / REPORT_FILE).read_text())
    assert report["final_loss"] < report["first_loss"]
    assert report["steps"] == 12
    config = BaseModelConfig.tiny()
    assert 0 < report["train_tokens"] <= 12 * config.batch_size * config.block_size  # padding is not counted
    assert BaseModelConfig.from_json(report["config"]) == BaseModelConfig.tiny()
    tok = AutoTokenizer.from_pretrained(trained, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(trained, local_files_only=True)
    assert model.num_parameters() == report["parameters"]
    tools = [{"type": "function", "function": {"name": "submit_ranking", "parameters": {"type": "object"}}}]
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tools=tools, tokenize=False,
                                     add_generation_prompt=True)  # fmt: skip
    assert "<tools>" in prompt and "submit_ranking" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert tok.decode(tok("<tool_call>")["input_ids"]) == "<tool_call>"


def test_the_embedded_worker_engine_serves_it(trained: Path) -> None:
    from llms.worker.engine import GenerationRequest, SamplingParams
    from llms.worker.hf_engine import TransformersEngine

    engine = TransformersEngine.load(trained, device="cpu")

    async def main() -> list[Any]:
        request = GenerationRequest([{"role": "user", "content": "red kurtas"}], SamplingParams(0.0, max_tokens=6))
        events = [e async for e in engine.generate(request)]
        await engine.aclose()
        return events

    events = asyncio.run(main())
    assert events[-1].finish_reason in {"stop", "length"}
    assert 1 <= events[-1].completion_tokens <= 6
    assert events[-1].prompt_tokens > 0
    assert engine.model_name == "tandem-base-tiny"


def test_cli_trains_once(tandem_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.api.test_cli import run_cli

    code, out, _ = run_cli(["train", "base", "--tiny", "--limit", "300"], capsys)
    assert code == 0, out
    assert re.search(r"trained 0\.\d+M parameters", out)
    code, out, _ = run_cli(["train", "base", "--tiny", "--limit", "300"], capsys)
    assert code == 0 and "already trained" in out


def test_step_calibration_times_a_real_step_on_the_training_device_and_leaves_no_gradients() -> None:
    """The time budget becomes a number of steps from this timing, so it must time the device training uses."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from finetune.train_base import _calibrate

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    model = Qwen2ForCausalLM(config)
    seconds = _calibrate(model, torch.randint(0, 64, (2, 32)))
    assert seconds > 0
    assert all(p.grad is None for p in model.parameters())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert {p.device.type for p in model.parameters()} == {expected}
