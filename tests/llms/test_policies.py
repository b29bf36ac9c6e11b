"""Balancing policies, the breaker, the delay models and worker configuration, in isolation."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import pytest
from pydantic import ValidationError

from llms.balancing import LeastOutstanding, PowerOfTwo, RoundRobin
from llms.breaker import CircuitBreaker
from llms.config import WorkerConfig
from llms.worker.delay import DelayModel
from llms.workers import WorkerState
from tests.support.clock import FakeClock


def pool(n: int, weights: list[float] | None = None) -> list[WorkerState]:
    weights = weights or [1.0] * n
    configs = [WorkerConfig(url=f"http://w{i}:1/v1", models=["m"], weight=weights[i]) for i in range(n)]
    return [WorkerState(c, order=i, breaker_threshold=3, breaker_reset_s=1.0) for i, c in enumerate(configs)]


def test_round_robin_cycles_in_order_and_skips_missing() -> None:
    workers = pool(3)
    rr = RoundRobin()
    assert [rr.choose(workers).order for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert rr.choose([workers[0], workers[2]]).order == 0
    assert rr.choose([workers[0], workers[2]]).order == 2


def test_least_outstanding_picks_the_idlest_per_weight_and_spreads_ties() -> None:
    workers = pool(3, weights=[1.0, 1.0, 4.0])
    workers[0].in_flight, workers[1].in_flight, workers[2].in_flight = 2, 1, 3
    lo = LeastOutstanding(random.Random(0))
    assert lo.choose(workers).order == 2  # 3 / 4 < 1 / 1
    tied = pool(4)
    counts = Counter(lo.choose(tied).order for _ in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert max(counts.values()) < 1.2 * 1000  # not "first of the least busy"


def test_power_of_two_prefers_fast_and_idle_workers() -> None:
    workers = pool(3)
    for w, latency in zip(workers, [0.05, 0.05, 0.5], strict=True):
        w.observe_latency(latency, decay_s=10, now=0.0)
    p2 = PowerOfTwo(random.Random(1))
    counts = Counter(p2.choose(workers).order for _ in range(3000))
    assert counts[2] == 0  # the slow one always loses its pair
    workers[0].in_flight = 30
    counts = Counter(p2.choose(workers).order for _ in range(3000))
    assert counts[1] > counts[0]


def test_power_of_two_samples_by_weight() -> None:
    workers = pool(2, weights=[1.0, 9.0])
    p2 = PowerOfTwo(random.Random(2))
    # Equal cost per weight: the heavier worker wins ties it is in, so it takes most traffic.
    counts = Counter(p2.choose(workers).order for _ in range(2000))
    assert counts[1] > counts[0]


def test_latency_ewma_is_peak_sensitive_then_decays() -> None:
    (w,) = pool(1)
    w.observe_latency(0.1, decay_s=1.0, now=0.0)
    w.observe_latency(1.0, decay_s=1.0, now=0.1)
    assert w.latency_ewma_s == 1.0  # a slow answer counts at once
    w.observe_latency(0.1, decay_s=1.0, now=5.0)
    assert w.latency_ewma_s is not None and w.latency_ewma_s < 0.2


def test_breaker_cycle_with_a_single_probe() -> None:
    b = CircuitBreaker(threshold=2, reset_s=10)
    b.record_failure(now=0)
    assert b.state == "closed" and b.allows(now=0)
    b.record_failure(now=0)
    assert b.state == "open" and not b.allows(now=5)
    assert b.allows(now=10)
    b.on_dispatch()
    assert b.state == "half_open" and not b.allows(now=11), "only one probe at a time"
    b.record_failure(now=11)
    assert b.state == "open" and not b.allows(now=12)
    b.on_dispatch()  # a probe after the next reset
    b.record_success()
    assert b.state == "closed" and b.failures == 0


def test_a_worker_and_its_breaker_read_the_clock_they_are_given() -> None:
    clock = FakeClock(start=50.0)
    config = WorkerConfig(url="http://w:1/v1", models=["m"])
    w = WorkerState(config, order=0, breaker_threshold=1, breaker_reset_s=5.0, clock=clock)
    w.breaker.record_failure()  # opened at 50 on the fake clock
    assert not w.has_slot()
    clock.advance(4.0)
    assert not w.has_slot()
    clock.advance(1.0)
    assert w.has_slot(), "reset_s has passed on the injected clock"
    w.observe_latency(1.0, decay_s=2.0)
    clock.advance(2.0 * math.log(2))  # one half-life of the EWMA's weight
    w.observe_latency(0.0, decay_s=2.0)
    assert w.latency_ewma_s == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("spec", "mean_ms"),
    [("constant:ms=40", 40.0), ("lognormal:median_ms=50,sigma=0.8", 50 * 1.3771), ("pareto:scale_ms=20,alpha=3", 30.0)],
)
def test_delay_models_match_their_mean(spec: str, mean_ms: float) -> None:
    model = DelayModel.parse(spec)
    assert model.mean_s * 1000 == pytest.approx(mean_ms, rel=1e-3)
    rng = random.Random(3)
    samples = [model.sample(rng) for _ in range(40000)]
    assert statistics.fmean(samples) * 1000 == pytest.approx(mean_ms, rel=0.05)


def test_delay_speed_scales_and_bad_specs_are_refused() -> None:
    assert DelayModel.parse("constant:ms=40,speed=0.25").mean_s == pytest.approx(0.16)
    for bad in ("uniform:ms=1", "constant:ms=x", "constant:", "pareto:scale_ms=1,alpha=1", "constant:ms=1,speed=0"):
        with pytest.raises(ValueError, match=r"delay|must|needs|alpha|speed"):
            DelayModel.parse(bad)


def test_worker_config_urls_and_names() -> None:
    w = WorkerConfig(url="http://vllm:8000/v1/")
    assert (w.name, w.chat_url, w.liveness_url) == ("vllm:8000", "http://vllm:8000/v1/chat/completions",
                                                     "http://vllm:8000/health")  # fmt: skip
    ollama = WorkerConfig(url="http://ollama:11434/v1", health_url="http://ollama:11434/api/version")
    assert ollama.liveness_url.endswith("/api/version")
    for bad in ({"url": "ollama:11434"}, {"url": "http://x/v1", "max_concurrency": 0}, {"url": "http://x", "bogus": 1}):
        with pytest.raises(ValidationError):
            WorkerConfig.model_validate(bad)


def test_the_balancers_speed_signal_is_time_per_token() -> None:
    short, long = pool(2)
    short.observe_latency(0.2, decay_s=10, now=0.0, tokens=10)  # a ranker call: 20 ms a token
    long.observe_latency(2.0, decay_s=10, now=0.0, tokens=200)  # a long explanation: 10 ms a token
    assert long.latency_ewma_s is not None and short.latency_ewma_s is not None
    assert long.latency_ewma_s > short.latency_ewma_s
    assert long.token_time_ewma_s == pytest.approx(0.01)
    p2 = PowerOfTwo(random.Random(0))
    assert Counter(p2.choose([short, long]).order for _ in range(200))[1] == 200
