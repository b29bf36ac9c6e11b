"""Target diversity → knob settings: the stored calibration, and how a chat turn uses it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from api.http.chat_schemas import ChatRequest
from api.http.chat_service import ChatService
from api.settings import Settings
from rag.diversity import CalibrationPoint, CalibrationPool, DiversityCalibration

POINTS = [
    CalibrationPoint("temperature", 0.0, ndcg=0.91, ild=0.30),
    CalibrationPoint("temperature", 1.8, ndcg=0.45, ild=0.70),
    CalibrationPoint("mmr_lambda", 0.4, ndcg=0.64, ild=0.63),
    CalibrationPoint("mmr_lambda", 0.0, ndcg=0.33, ild=0.77),
]


def test_the_cheapest_setting_that_reaches_the_share_of_the_range_is_chosen() -> None:
    calibration = DiversityCalibration(POINTS, "test", CalibrationPool(candidates=26, explore=16))
    assert calibration.settings_for(0.0)["knob"] == "temperature"  # the most relevant point reaches the bottom
    pick = calibration.settings_for(0.75)  # target ILD 0.30 + 0.75 * 0.47 = 0.6525: λ 0.4 misses it
    assert (pick["knob"], pick["value"], pick["expected_ild"]) == ("temperature", 1.8, 0.70)
    assert calibration.settings_for(1.0)["value"] == 0.0
    assert DiversityCalibration().settings_for(0.3) == {"knob": "mmr_lambda", "value": 0.7, "calibrated": False}
    with pytest.raises(ValueError, match="within"):
        calibration.settings_for(1.5)


def test_the_calibration_and_its_pool_round_trip(tmp_path: Path) -> None:
    calibration = DiversityCalibration(POINTS, "eval/reports/diversity.json", CalibrationPool(26, 16))
    calibration.save(tmp_path / "c.json")
    assert DiversityCalibration.load(tmp_path / "c.json") == calibration
    assert DiversityCalibration.load(tmp_path / "missing.json") == DiversityCalibration()


def _service(calibration: DiversityCalibration) -> ChatService:
    pipeline: Any = SimpleNamespace(config=SimpleNamespace(ranker_candidates=20))
    return ChatService(pipeline, fetcher=None, limits=None, settings=Settings(), calibration=calibration)  # type: ignore[arg-type]


def test_a_target_diversity_uses_the_pools_the_calibration_was_measured_on() -> None:
    service = _service(DiversityCalibration(POINTS, "test", CalibrationPool(candidates=26, explore=16)))
    sampling, lam, settings = service.knobs(ChatRequest.model_validate({"message": {"text": "x"}, "diversity": 0.75}))
    assert sampling.temperature == 1.8 and lam is None
    assert (settings["candidates"], settings["explore"], settings["calibrated"]) == (26, 16, True)
    own = ChatRequest.model_validate({"message": {"text": "x"}, "diversity": 0.75, "candidates": 12})
    assert service.knobs(own)[2]["candidates"] == 12 and service.knobs(own)[2]["explore"] == 0  # the request's own
    plain = service.knobs(ChatRequest.model_validate({"message": {"text": "x"}}))[2]
    assert (plain["candidates"], plain["explore"]) == (20, 0)  # no target: the pipeline's pools
    old = _service(DiversityCalibration(POINTS, "before pools were stored"))
    assert old.knobs(ChatRequest.model_validate({"message": {"text": "x"}, "diversity": 0.75}))[2]["explore"] == 0
