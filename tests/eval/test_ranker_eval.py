"""Ranker evaluation: validation of answers, the metrics per protocol, the reference point, the report."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from eval.ranker_eval import RankerAnswer, evaluate_cases, validate_ranking, write_report
from finetune.buyers import Buyer, BuyerProfile
from finetune.ranking_data import RankingCase

CANDS = [f"p{i}" for i in range(20)]


def buyer(i: int) -> Buyer:
    return Buyer(f"b{i}", BuyerProfile("boutique", "Western Europe", "25-34", None), ("x",), "t", "red shirts", None,
                 "test")  # fmt: skip


def one_of_20(i: int, target_at: int) -> RankingCase:
    return RankingCase(buyer(i), tuple(CANDS), {c: int(j == target_at) for j, c in enumerate(CANDS)}, "one_of_20")


def test_validation_drops_unknown_and_duplicate_ids_and_fills_in_retrieval_order() -> None:
    checked = validate_ranking(["p3", "zz", "p3", "p1"], CANDS[:5])
    assert checked.ranking == ["p3", "p1", "p0", "p2", "p4"]
    assert (checked.returned, checked.hallucinated, checked.duplicates, checked.filled) == (4, 1, 1, 3)
    assert validate_ranking(None, CANDS[:3]).ranking == CANDS[:3]


def test_random_order_matches_the_public_reference_point() -> None:
    rng = random.Random(0)
    cases = [one_of_20(i, rng.randrange(20)) for i in range(3000)]
    results = evaluate_cases({"one_of_20": cases}, {})
    # 1 relevant of 20 in random order: E[NDCG@10] = (1/20) * sum_{i=1..10} 1/log2(i+1) = 0.2272
    assert results["one_of_20"]["random"]["ndcg@10"] == pytest.approx(0.227, abs=0.01)
    assert results["one_of_20"]["random"]["recall@10"] == pytest.approx(0.5, abs=0.03)


def test_llm_methods_are_scored_after_validation_and_rates_are_counted() -> None:
    cases = [one_of_20(i, 7) for i in range(10)]

    def perfect(batch: list[RankingCase]) -> list[RankerAnswer]:
        return [RankerAnswer(["p7", "p7", "nope"]) for _ in batch]

    def broken(batch: list[RankingCase]) -> list[RankerAnswer]:
        return [RankerAnswer(None, "I think p7") for _ in batch]

    results = evaluate_cases({"one_of_20": cases}, {"lora": perfect, "base_zero_shot": broken})  # type: ignore[dict-item]
    assert {k: results["one_of_20"]["lora"][k] for k in ("ndcg@10", "recall@10")} == {"ndcg@10": 1.0, "recall@10": 1.0}
    # Fused with retrieval order (RRF, k 60, equal weights), the wanted p7 (ranker 1st, retrieval 8th) lands 4th:
    # by hand, 1/61 + 1/68 beats p3's 1/65 + 1/64 but not p2's 1/64 + 1/63.
    assert results["one_of_20"]["lora_rrf"]["ndcg@10"] == pytest.approx(1 / math.log2(4 + 1), abs=1e-4)
    # Filled in retrieval order: the same scores, no gain.
    assert results["one_of_20"]["base_zero_shot"] == results["one_of_20"]["retrieval"] | {"gain": 0.0, "gain_se": 0.0}
    assert results["rates"] == {"invalid_tool_call": 0.0, "hallucinated_id": round(1 / 3, 4),
                                "duplicate_id": round(1 / 3, 4)}  # fmt: skip
    assert results["rates_by_method"]["base_zero_shot"]["invalid_tool_call"] == 1.0
    assert results["hallucinated_after_validation"] == 0  # counted over the validated rankings


def test_full_list_uses_graded_relevance() -> None:
    rel = dict.fromkeys(CANDS, 0) | {"p5": 3, "p6": 2, "p9": 1}
    case = RankingCase(buyer(0), tuple(CANDS), rel, "full_list")

    def ideal(batch: list[RankingCase]) -> list[RankerAnswer]:
        return [RankerAnswer(["p5", "p6", "p9"]) for _ in batch]

    results = evaluate_cases({"full_list": [case]}, {"lora": ideal})  # type: ignore[dict-item]
    assert results["full_list"]["lora"]["ndcg@10"] == 1.0
    assert results["full_list"]["lora"]["recall@10"] == 1.0  # grade >= 2 counts as relevant
    assert results["full_list"]["retrieval"]["ndcg@10"] < 1.0


def test_report_states_synthetic_and_targets(tmp_path: Path) -> None:
    results = {
        "one_of_20": {"retrieval": {"ndcg@10": 0.3}, "base_zero_shot": {"ndcg@10": 0.31},
                      "lora": {"ndcg@10": 0.4, "gain": 0.3333, "gain_se": 0.05}, "cases": 5},
        "full_list": {"retrieval": {"ndcg@10": 0.5}, "base_zero_shot": {"ndcg@10": 0.5}, "lora": {"ndcg@10": 0.52},
                      "cases": 5},
        "rates": {"invalid_tool_call": 0.0},
        "hallucinated_after_validation": 0,
    }  # fmt: skip
    md = write_report(results, tmp_path, {"base model": "600 s"}).read_text()
    assert "SYNTHETIC" in md and "synthetic" in md
    assert "| one_of_20: LoRA NDCG@10 ≥ retrieval + 5 % | 0.4000 vs 0.3000 | PASS |" in md
    # Above retrieval, but by less than the 5 % the target asks for.
    assert "| full_list: LoRA NDCG@10 ≥ retrieval + 5 % | 0.5200 vs 0.5000 | MISS |" in md
    assert "| full_list: LoRA NDCG@10 above base_zero_shot | 0.5200 vs 0.5000 | PASS |" in md
    assert "one_of_20 +33.3%, full_list +4.0%" in md
    assert "| lora | 0.4000 | +33.3% ± 5.0% |" in md and "| teacher |" not in md  # no row for a method not run
    assert "| hallucinated ids after validation = 0 | 0 | PASS |" in md
    assert json.loads((tmp_path / "ranker_eval.json").read_text())["training"] == {"base model": "600 s"}


def test_a_reference_ordering_is_scored_with_its_paired_gain_over_retrieval() -> None:
    rng = random.Random(1)
    cases = [one_of_20(i, rng.randrange(20)) for i in range(40)]
    wanted = {c.buyer.buyer_id: next(p for p, r in c.relevance.items() if r) for c in cases}

    def half_right(case: RankingCase) -> list[str]:  # knows the wanted product for even buyers only
        pid = wanted[case.buyer.buyer_id]
        if int(case.buyer.buyer_id[1:]) % 2:
            return list(reversed(case.candidates))
        return [pid, *(c for c in case.candidates if c != pid)]

    row = evaluate_cases({"one_of_20": cases}, {}, references={"teacher": half_right})["one_of_20"]["teacher"]

    # Oracle: the per-case NDCG@10 of both orderings by hand (one relevant item: 1 / log2(rank + 1) within the top 10).
    def ndcg(ranking: list[str], pid: str) -> float:
        rank = ranking.index(pid) + 1
        return 1 / math.log2(rank + 1) if rank <= 10 else 0.0

    ours = [ndcg(half_right(c), wanted[c.buyer.buyer_id]) for c in cases]
    base = [ndcg(list(c.candidates), wanted[c.buyer.buyer_id]) for c in cases]
    diff = [a - b for a, b in zip(ours, base, strict=True)]
    mean_diff, mean_base = sum(diff) / len(diff), sum(base) / len(base)
    sd = math.sqrt(sum((d - mean_diff) ** 2 for d in diff) / (len(diff) - 1))
    assert row["ndcg@10"] == pytest.approx(sum(ours) / len(ours), abs=1e-4)
    assert row["gain"] == pytest.approx(mean_diff / mean_base, abs=1e-4)
    assert row["gain_se"] == pytest.approx(sd / math.sqrt(len(diff)) / mean_base, abs=1e-4)
