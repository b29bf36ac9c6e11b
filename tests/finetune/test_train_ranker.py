"""The LoRA ranker's training pipeline on a tiny base built here: distillation or TRL SFT, adapter, config, serving."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from finetune.buyers import BuyerConfig, CatalogueCodes, generate_buyers
from finetune.ranking_data import RankingCase, make_case
from finetune.tiny_lm import build_tiny_chat_model
from finetune.train_ranker import CONFIG_FILE, RankerTrainConfig, train_ranker
from retrieval.catalogue import Catalogue, load_catalogue


@pytest.fixture(scope="module")
def catalogue(fashion_dir: Path) -> Catalogue:
    return load_catalogue(fashion_dir, limit=1500, check_images=False)


def fake_hits(catalogue: Catalogue, target: str, rng: random.Random) -> list[str]:
    """Stand-in for retrieval: the target among products of its category and random others."""
    product = catalogue.get(target)
    assert product is not None
    same = [p.product_id for p in catalogue.products if p.category == product.category and p.product_id != target]
    others = [p.product_id for p in rng.sample(catalogue.products, 40) if p.product_id != target]
    hits = list(dict.fromkeys([*same[:15], *others]))[:29]
    hits.insert(rng.randrange(len(hits)), target)
    return hits


@pytest.fixture(scope="module")
def cases(catalogue: Catalogue) -> list[RankingCase]:
    rng = random.Random(0)
    out = []
    for i, buyer in enumerate(generate_buyers(catalogue, BuyerConfig(n_buyers=12, seed=1))):
        case = make_case(buyer, fake_hits(catalogue, buyer.target, rng), catalogue,
                         protocol="one_of_20" if i % 2 else "full_list", rng=rng)  # fmt: skip
        assert case is not None
        out.append(case)
    return out


def test_config_round_trips_through_json() -> None:
    config = RankerTrainConfig(r=8, target_modules=("q_proj", "v_proj"), max_steps=3)
    assert RankerTrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


@pytest.mark.parametrize(("objective", "top_layers"), [("distill", 1), ("sft", None)])
def test_tiny_training_saves_a_servable_adapter(
    objective: str,
    top_layers: int | None,
    cases: list[RankingCase],
    catalogue: Catalogue,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from dataclasses import replace

    from llms.worker.hf_engine import TransformersEngine

    root = tmp_path_factory.mktemp("ranker")
    base = build_tiny_chat_model(root / "tiny-base", hidden_size=32, num_layers=2, vocab_size=600)
    out = root / "tandem-ranker"
    config = replace(RankerTrainConfig.tiny(), objective=objective, top_layers=top_layers)
    report = train_ranker(cases, catalogue, CatalogueCodes(catalogue.products), str(base), out, config)
    assert report.steps == 4 and report.examples == len(cases)
    assert report.trainable_parameters > 0
    saved = json.loads((out / CONFIG_FILE).read_text())
    assert RankerTrainConfig.from_json(saved["config"]) == config
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["layers_to_transform"] == ([1] if top_layers else None)  # the upper layer of two
    serve = (out / "SERVE.md").read_text()
    assert f"--lora-modules tandem-ranker={out}" in serve and "--tool-call-parser hermes" in serve
    assert (out / "Modelfile").read_text() == f"FROM {base}\nADAPTER .\n"
    engine = TransformersEngine.load(base, {"tandem-ranker": out}, device="cpu")
    assert list(engine.adapters) == ["tandem-ranker"]


@pytest.mark.parametrize(("objective", "checkpoint"), [("distill", "distill_state.pt"), ("sft", "checkpoint-1")])
def test_a_budget_stop_keeps_a_checkpoint_and_the_same_run_resumes_there(
    objective: str,
    checkpoint: str,
    cases: list[RankingCase],
    catalogue: Catalogue,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from dataclasses import replace

    root = tmp_path_factory.mktemp("resume")
    base = build_tiny_chat_model(root / "tiny-base", hidden_size=32, num_layers=2, vocab_size=600)
    out, checkpoints = root / "tandem-ranker", root / "tandem-ranker.checkpoints"
    codes = CatalogueCodes(catalogue.products)
    config = replace(RankerTrainConfig.tiny(), max_steps=5, save_steps=100, objective=objective)
    stopped = train_ranker(cases, catalogue, codes, str(base), out, replace(config, max_minutes=1e-9),
                           checkpoint_dir=checkpoints)  # fmt: skip
    assert (stopped.steps, stopped.planned_steps, stopped.complete) == (1, 5, False)
    assert (checkpoints / checkpoint).exists()  # saved where the budget stopped it, not at save_steps
    assert json.loads((out / CONFIG_FILE).read_text())["steps"] == 1  # an adapter to serve meanwhile
    finished = train_ranker(cases, catalogue, codes, str(base), out, config, checkpoint_dir=checkpoints)
    assert (finished.resumed_from_step, finished.steps, finished.complete) == (1, 5, True)
    assert not checkpoints.exists()
