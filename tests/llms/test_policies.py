"""Balancing policies, the breaker, the delay models and worker configuration, in isolation."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from collections import Counter
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from llms.balancing import (
    Affinity,
    HashRing,
    LeastOutstanding,
    PowerOfTwo,
    RoundRobin,
    make_policy,
    routing_key,
)
from llms.breaker import CircuitBreaker
from llms.config import BalancingPolicy, DispatcherConfig, WorkerConfig
from llms.dispatcher import Dispatcher
from llms.worker.delay import DelayModel
from llms.worker.engine import GenerationRequest, SamplingParams
from llms.worker.simulated import PrefixCache, SimulatedEngine
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


# --------------------------------------------------------------------------- session affinity


def _keys(n: int) -> list[str]:
    return [f"user:session-{i}" for i in range(n)]


def test_hash_ring_spreads_keys_and_is_stable_across_instances() -> None:
    names = ["a", "b", "c"]
    ring, again = HashRing(names), HashRing(list(reversed(names)))
    owners = [ring.lookup(k) for k in _keys(3000)]
    assert owners == [again.lookup(k) for k in _keys(3000)], "placement depends on names only, not on their order"
    counts = Counter(owners)
    assert set(counts) == set(names)
    assert max(counts.values()) < 1.5 * 1000  # 64 virtual nodes each: no worker gets half the keys


def test_affinity_is_sticky_while_the_home_is_healthy() -> None:
    workers = pool(3)
    policy = Affinity(random.Random(0))
    ring = HashRing([w.name for w in workers])
    for key in _keys(200):
        first = policy.choose(workers, key)
        assert first.name == ring.lookup(key), "the home is the ring's owner"
        assert all(policy.choose(workers, key) is first for _ in range(3))
    assert policy.spilled == 0


def test_affinity_moves_only_the_leaving_workers_keys() -> None:
    workers = pool(4)
    policy = Affinity(random.Random(0))
    before = {k: policy.choose(workers, k).name for k in _keys(2000)}
    gone = workers[1]
    gone.healthy = False  # out (a refused connection, failed health checks): no longer a candidate
    rest = [w for w in workers if w is not gone]
    after = {k: policy.choose(rest, k).name for k in _keys(2000)}
    oracle = HashRing([w.name for w in rest])
    moved = {k for k in before if before[k] != after[k]}
    assert moved == {k for k in before if before[k] == gone.name}, "only the leaving worker's keys move"
    assert all(after[k] == oracle.lookup(k) for k in moved), "each to its ring successor"
    assert 300 < len(moved) < 700  # about a quarter of 2000
    gone.healthy = True
    assert {k: policy.choose(workers, k).name for k in _keys(2000)} == before, "and come back when it does"


def test_affinity_falls_back_to_power_of_two_when_the_home_is_overloaded_or_full() -> None:
    workers = pool(3)
    policy = Affinity(random.Random(0), load_factor=1.25)
    key = next(k for k in _keys(50) if HashRing([w.name for w in workers]).lookup(k) == workers[0].name)
    workers[0].in_flight = 2  # 2 + 1 > ⌈1.25 × (2 + 1) / 3⌉ = 2: over its bound against idle peers
    picks = Counter(policy.choose(workers, key).order for _ in range(300))
    assert picks[0] == 0 and picks[1] > 0 and picks[2] > 0
    assert policy.spilled == 300
    workers[1].in_flight = workers[2].in_flight = 1  # 3 ≤ ⌈1.25 × (4 + 1) / 3⌉ = 3: within the bound again
    assert policy.choose(workers, key) is workers[0]
    # A full home (no free slot) is not a candidate; its key spills rather than moving to the successor.
    workers[0].in_flight = workers[0].config.max_concurrency
    successor = HashRing([w.name for w in workers[1:]]).lookup(key)
    spread = Counter(policy.choose(workers[1:], key).name for _ in range(300))
    assert len(spread) == 2, f"power of two over both others, not always the ring successor {successor}"


def test_affinity_without_a_key_is_power_of_two() -> None:
    workers = pool(3)
    for w, latency in zip(workers, [0.05, 0.05, 0.5], strict=True):
        w.observe_latency(latency, decay_s=10, now=0.0)
    policy = Affinity(random.Random(1))
    counts = Counter(policy.choose(workers).order for _ in range(3000))
    assert counts[2] == 0 and counts[0] > 0 and counts[1] > 0
    assert policy.sticky == policy.spilled == 0


def test_routing_key_is_the_session_else_the_conversations_prefix() -> None:
    system = {"role": "system", "content": "You help buyers."}
    turn1 = [system, {"role": "user", "content": "red shoes"}]
    turn2 = [*turn1, {"role": "assistant", "content": "here"}, {"role": "user", "content": "cheaper"}]
    other = [system, {"role": "user", "content": "blue hats"}]
    assert routing_key({"user": "abc", "messages": turn1}) == "user:abc"
    assert routing_key({"messages": turn1}) == routing_key({"messages": turn2}), "every turn of one conversation"
    assert routing_key({"messages": turn1}) != routing_key({"messages": other}), "one system prompt, two keys"
    assert routing_key({"user": "", "messages": turn1}) == routing_key({"messages": turn1})
    assert make_policy(BalancingPolicy.AFFINITY, random.Random(0)).__class__ is Affinity


def test_the_dispatcher_routes_by_the_requests_user_field() -> None:
    served: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        served.append(request.url.host)
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        body = {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}
        return httpx.Response(200, json=body)

    workers = [WorkerConfig(url=f"http://w{i}:1/v1", name=f"w{i}", models=["m"]) for i in range(4)]
    ring = HashRing([w.name for w in workers])

    async def main() -> None:
        config = DispatcherConfig(policy=BalancingPolicy.AFFINITY)
        transport = httpx.MockTransport(handler)
        async with Dispatcher(config, workers, transport=transport, health_checks=False, rng=random.Random(0)) as d:
            for session in ("s1", "s2", "s3", "s4", "s5"):
                for turn in range(3):
                    messages = [{"role": "user", "content": f"turn {turn}"}]
                    done = await d.complete({"model": "m", "messages": messages, "user": session})
                    assert done.worker == ring.lookup(f"user:{session}")

    asyncio.run(main())
    assert len(served) == 15


def test_the_simulated_prefix_cache_finds_the_previous_turn_and_evicts_longest_first() -> None:
    cache = PrefixCache(tokens=12, prefill_ms=1.0)
    turn1 = [{"role": "user", "content": "one two three four"}]
    turn2 = [*turn1, {"role": "assistant", "content": "five six"}, {"role": "user", "content": "seven eight"}]
    assert cache.serve(turn1) == 0
    assert cache.serve(turn2) == 4, "turn 1's prompt is cached"
    assert cache.serve(turn2) == 8
    assert cache.used == 8
    other = [{"role": "user", "content": "a b c d e f"}]  # 6 more words: 14 > 12, the oldest block goes
    assert cache.serve(other) == 0
    assert cache.used <= 12
    assert cache.serve(turn1) == 4, "the evicted block was turn 2's tail, not the prefix it extends"
    assert (cache.prompt_tokens, cache.cached_tokens) == (4 + 8 + 8 + 6 + 4, 0 + 4 + 8 + 0 + 4)
    assert PrefixCache.parse("tokens=100,prefill_ms=0.5") == PrefixCache(100, 0.5)
    for bad in ("prefill_ms=1", "tokens=x", "size=3"):
        with pytest.raises(ValueError, match="prefix cache"):
            PrefixCache.parse(bad)


def test_a_simulated_engine_with_a_prefix_cache_says_what_was_cached() -> None:
    engine = SimulatedEngine(delay=DelayModel.parse("constant:ms=0"), prefix_cache=PrefixCache(tokens=100))
    turn1 = [{"role": "user", "content": "red shoes for a shop"}]
    turn2 = [*turn1, {"role": "assistant", "content": "here"}, {"role": "user", "content": "cheaper"}]

    async def reply(messages: list[dict[str, Any]]) -> str:
        request = GenerationRequest(messages, SamplingParams(max_tokens=12))
        return "".join([e.text async for e in engine.generate(request)])

    assert asyncio.run(reply(turn1)).startswith("[simulated tandem-simulated, prefix cache 0/5] about red")
    assert asyncio.run(reply(turn2)).startswith("[simulated tandem-simulated, prefix cache 5/7] about cheaper")


def test_a_hot_key_fills_its_home_only_to_the_bounded_load() -> None:
    workers = pool(4)
    policy = Affinity(random.Random(0), load_factor=1.25)
    home = HashRing([w.name for w in workers]).lookup("user:hot")
    expected = 0  # the home takes each request that keeps it within ⌈c × (in flight + 1) / n⌉, and only those
    for n in range(1, 41):  # 40 requests of one session arrive, none finishes
        policy.choose(workers, "user:hot").in_flight += 1
        expected += expected + 1 <= math.ceil(1.25 * n / 4)
        assert next(w.in_flight for w in workers if w.name == home) == expected
    assert expected == math.ceil(1.25 * 40 / 4)
