"""`tandem train ranker --tiny`, `tandem eval ranker|ranker-probe|explainer|cold-start` end to end on a small index.

The base model is a tiny random one built here (``TANDEM_LLM__BASE`` names its folder), so the
commands run in seconds; the real packaged model has its own tests (``tests/llms/test_packaged_model.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import run_cli


@pytest.fixture
def small_env(tandem_env: Path, small_catalogue_dir: Path, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> Path:  # fmt: skip
    from api.settings import get_settings
    from finetune.tiny_lm import build_tiny_chat_model

    base = build_tiny_chat_model(tandem_env.parent / "tiny-base", hidden_size=32, num_layers=2, vocab_size=600)
    monkeypatch.setenv("TANDEM_CATALOGUE__PATH", str(small_catalogue_dir))
    monkeypatch.setenv("TANDEM_LLM__BASE", str(base))
    get_settings.cache_clear()
    code, _, err = run_cli(["index"], capsys)
    assert code == 0, err
    return tandem_env


def test_eval_without_models_is_one_line(
    small_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from api.settings import get_settings

    monkeypatch.setenv("TANDEM_LLM__RANKER_ADAPTER", str(small_env / "no-adapter"))
    get_settings.cache_clear()
    for command in ("ranker", "ranker-probe", "explainer"):
        code, _, err = run_cli(["eval", command], capsys)
        assert code == 1
        assert "tandem train ranker" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("TANDEM_LLM__BASE", str(small_env / "no-such-model.gguf"))
    get_settings.cache_clear()
    code, _, err = run_cli(["eval", "cold-start"], capsys)
    assert code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_train_and_evaluate_the_ranker(small_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["train", "ranker", "--tiny", "--buyers", "50"], capsys)
    assert code == 0, err
    assert "trained the LoRA ranker" in out and "SYNTHETIC train buyers" in out
    ranker = small_env / "models" / "tandem-ranker"
    assert (ranker / "adapter_config.json").is_file() and (ranker / "SERVE.md").is_file()
    assert (small_env / "data" / "buyers" / "README.md").read_text().startswith("# SYNTHETIC buyers")

    out_json = tmp_path / "ranker.json"
    code, out, err = run_cli(["eval", "ranker", "--buyers", "4", "--json", str(out_json),
                              "--report-dir", str(tmp_path / "reports")], capsys)  # fmt: skip
    assert code == 0, err
    results = json.loads(out_json.read_text())
    for protocol in ("one_of_20", "full_list"):
        assert set(results[protocol]) >= {"random", "retrieval", "base_zero_shot", "lora", "cases"}
        for method in ("random", "retrieval", "base_zero_shot", "lora"):
            assert 0.0 <= results[protocol][method]["ndcg@10"] <= 1.0
    assert set(results["rates"]) == {"invalid_tool_call", "hallucinated_id", "duplicate_id"}
    md = (tmp_path / "reports" / "ranker_eval.md").read_text()
    assert "SYNTHETIC" in md and "LoRA ranker" in md and "retrieval + 5 %" in md

    # Whole chat turns: a random tiny explainer's sentences are checked; whatever is shown is true.
    code, out, err = run_cli(["eval", "explainer", "--turns", "3", "--report-dir", str(tmp_path / "reports")], capsys)
    assert code == 0, err
    explainer = json.loads((tmp_path / "reports" / "explainer_eval.json").read_text())
    assert explainer["turns"] == 3 and explainer["explanations"]["false_claim_shown"] == 0.0
    assert 0 < explainer["sentences"]["shown"] <= 9 and len(explainer["examples"]) == 3
    assert "SYNTHETIC" in (tmp_path / "reports" / "explainer_eval.md").read_text()
    # Cold start: guided decoding makes even a random model's answer a valid list of topics.
    code, out, err = run_cli(["eval", "cold-start", "--buyers", "3", "--report-dir", str(tmp_path / "reports")],
                             capsys)  # fmt: skip
    assert code == 0, err
    cold = json.loads((tmp_path / "reports" / "cold_start.json").read_text())
    assert cold["buyers"] == 3 and cold["valid_rate"] == 1.0 and 0.0 <= cold["plausible_topic_rate"] <= 1.0

    # The first-id probe on the same small models: both models, both protocols, NDCG@10 of each reading.
    code, out, err = run_cli(["eval", "ranker-probe", "--buyers", "4", "--json", str(tmp_path / "probe.json")], capsys)
    assert code == 0, err
    probe = json.loads((tmp_path / "probe.json").read_text())
    for model in ("base_zero_shot", "lora"):
        for protocol in ("one_of_20", "full_list"):
            r = probe[model][protocol]
            assert r["cases"] == results[protocol]["cases"]
            assert r["retrieval"] == pytest.approx(results[protocol]["retrieval"]["ndcg@10"], abs=1e-4)
            assert 0.0 <= r["position_debiased"] <= 1.0 and all(p <= 0 for p in r["position_prior"])

    # The diversity experiment on the same small models: a budget of one request's calls.
    reports = str(tmp_path / "reports")
    code, out, err = run_cli(["experiment", "diversity", "--budget", "14", "--seeds", "1", "--json",
                              str(tmp_path / "diversity.json"), "--report-dir", reports], capsys)  # fmt: skip
    assert code == 0, err
    diversity = json.loads((tmp_path / "diversity.json").read_text())
    assert set(diversity) >= {"settings", "ild_range_ratio", "ndcg_gap_vs_mmr_at_equal_ild"}
    assert {s["knob"] for s in diversity["settings"]} == {"temperature", "top_p", "top_k", "mmr_lambda"}
    assert all(set(s) >= {"knob", "value", "ndcg@10", "ild@10", "ild_std"} for s in diversity["settings"])
    assert (tmp_path / "reports" / "diversity.png").is_file()
    from rag.diversity import DiversityCalibration

    calibration = DiversityCalibration.load(small_env / "models" / "diversity_calibration.json")
    assert calibration.calibrated and calibration.settings_for(1.0)["calibrated"] is True
    code, _, err = run_cli(["experiment", "diversity", "--budget", "20", "--seeds", "3"], capsys)  # 40 calls a request
    assert code == 1 and "below one request's 40 ranker calls" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["experiment", "diversity", "--pool", "20", "--explore", "7"], capsys)
    assert code == 1 and "over the ranker's 26 candidate ids" in err and len(err.strip().splitlines()) == 1
