"""The dispatcher against scripted workers: admission, priorities, deadlines, balancing, failover, breakers.

No test here measures seconds on the real clock: order is set with gated workers and
:func:`settle`, and deadlines, latencies and breaker resets run on a :class:`FakeClock` the test
advances. Real waits remain only where the dispatcher itself must sleep (a hung worker, a
stalled stream, the health loop), each under a generous guard that turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from llms.config import BalancingPolicy, DispatcherConfig, WorkerConfig
from llms.dispatcher import Dispatcher, Priority
from llms.errors import (
    DeadlineExceededError,
    InvalidChatRequestError,
    MalformedToolCallError,
    ModelNotFoundError,
    NoWorkerError,
    OverloadedError,
    StreamInterruptedError,
)
from tests.support.clock import FakeClock
from tests.support.scripted import Behaviour, ScriptedTransport
from tests.support.waiting import eventually, settle

T = TypeVar("T")

MSG = [{"role": "user", "content": "red dresses for a boutique"}]


def payload(model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MSG, **extra}


def run(
    behaviours: dict[str, Behaviour],
    body: Callable[[Dispatcher], Awaitable[T]],
    *,
    health_checks: bool = False,
    workers: list[WorkerConfig] | None = None,
    clock: FakeClock | None = None,
    **config: Any,
) -> T:
    async def main() -> T:
        configs = workers or [
            WorkerConfig(url=f"http://{host}/v1", name=host, models=list(b.models), max_concurrency=4)
            for host, b in behaviours.items()
        ]
        dispatcher = Dispatcher(
            DispatcherConfig(**config),
            configs,
            transport=ScriptedTransport(behaviours, clock),
            rng=random.Random(7),
            health_checks=health_checks,
            **({} if clock is None else {"clock": clock}),
        )
        async with dispatcher:
            return await body(dispatcher)

    return asyncio.run(main())


def test_completes_and_reports_where() -> None:
    async def body(d: Dispatcher) -> None:
        done = await d.complete(payload())
        assert done.message["content"] == "from a"
        assert done.worker == "a"
        assert done.attempts == 1
        assert d.workers()[0].in_flight == 0

    run({"a": Behaviour()}, body)


def test_per_worker_concurrency_limit_is_never_exceeded() -> None:
    behaviours = {"a": Behaviour(delay_s=0.02), "b": Behaviour(delay_s=0.02)}

    async def body(d: Dispatcher) -> None:
        results = await asyncio.gather(*(d.complete(payload()) for _ in range(40)))
        assert len(results) == 40

    run(behaviours, body)
    assert behaviours["a"].peak <= 4
    assert behaviours["b"].peak <= 4
    assert behaviours["a"].requests + behaviours["b"].requests == 40


def test_full_queue_refuses_at_once_and_loses_nothing_admitted() -> None:
    gate = asyncio.Event()
    behaviours = {"a": Behaviour(gate=gate)}

    async def body(d: Dispatcher) -> list[Any]:
        tasks = [asyncio.create_task(d.complete(payload())) for _ in range(4 + 3)]  # 4 in flight + 3 queued
        await settle(lambda: behaviours["a"].requests == 4 and d.queued == 3)
        refused = d.complete(payload())
        # "At once" means before the first suspension: one step of the coroutine must raise, not park it in the queue.
        with pytest.raises(OverloadedError) as error:
            refused.send(None)
        assert error.value.retry_after_s >= 1
        assert d.queued == 3 and behaviours["a"].requests == 4
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(behaviours, body, max_queue=3)
    assert all(not isinstance(r, BaseException) for r in results)
    assert behaviours["a"].requests == 7


def test_batch_work_cannot_fill_the_whole_queue() -> None:
    gate = asyncio.Event()
    behaviours = {"a": Behaviour(gate=gate)}

    async def body(d: Dispatcher) -> None:
        tasks = [asyncio.create_task(d.complete(payload(), priority=Priority.BATCH)) for _ in range(4 + 2)]
        await settle(lambda: d.queued == 2)
        with pytest.raises(OverloadedError, match="limit 2 for batch"):
            await d.complete(payload(), priority=Priority.BATCH)
        interactive = asyncio.create_task(d.complete(payload()))  # still room for chat
        await settle(lambda: d.queued == 3)
        gate.set()
        await asyncio.gather(*tasks, interactive)

    run(behaviours, body, max_queue=4, batch_queue_fraction=0.5)
    assert behaviours["a"].requests == 4 + 2 + 1


def test_interactive_requests_leave_the_queue_before_batch_ones() -> None:
    gate = asyncio.Event()
    behaviours = {"a": Behaviour(gate=gate)}

    async def body(d: Dispatcher) -> None:
        def send(tag: str, priority: Priority) -> asyncio.Task[Any]:
            return asyncio.create_task(d.complete(payload(user=tag), priority=priority))

        blockers = [send(f"block{i}", Priority.BATCH) for i in range(4)]
        await settle(lambda: behaviours["a"].requests == 4)
        batch = [send(f"batch{i}", Priority.BATCH) for i in range(4)]
        await settle(lambda: d.queued == 4)
        chat = [send(f"chat{i}", Priority.INTERACTIVE) for i in range(4)]
        await settle(lambda: d.queued == 8)
        gate.set()
        await asyncio.gather(*blockers, *batch, *chat)

    run(behaviours, body)
    served = [p["user"] for p in behaviours["a"].payloads]
    # Chat that arrived last is served before batch that arrived earlier; each priority keeps arrival order.
    assert served == [f"{tag}{i}" for tag in ("block", "chat", "batch") for i in range(4)], served


def test_deadline_in_queue_ends_the_request_and_frees_its_place() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    behaviours = {"a": Behaviour(gate=gate)}

    async def body(d: Dispatcher) -> None:
        blockers = [asyncio.create_task(d.complete(payload())) for _ in range(4)]
        await settle(lambda: behaviours["a"].requests == 4)
        late = asyncio.create_task(d.complete(payload(), deadline_s=0.05))
        await settle(lambda: d.queued == 1)
        clock.advance(0.04)
        # Real time runs past 0.05 s here; the request must still wait, because its clock says 0.04 s.
        await asyncio.sleep(0.1)
        assert not late.done() and d.queued == 1
        clock.advance(0.02)
        with pytest.raises(DeadlineExceededError, match="in queue"):
            await late
        assert d.queued == 0
        gate.set()
        await asyncio.gather(*blockers)
        assert 'tandem_llm_rejected_total{reason="deadline_in_queue"} 1.0' in d.metrics.render().decode()

    run(behaviours, body, clock=clock)
    assert behaviours["a"].requests == 4  # the expired request never reached a worker


@pytest.mark.parametrize(("on_worker_s", "retried"), [(4.9, True), (5.0, False)])
def test_a_deadline_that_passes_during_a_failed_attempt_stops_the_retries(on_worker_s: float, retried: bool) -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    behaviours = {"a": Behaviour(mode="http_500", gate=gate), "b": Behaviour()}

    async def body(d: Dispatcher) -> None:
        task = asyncio.create_task(d.complete(payload(), deadline_s=5.0))
        await settle(lambda: behaviours["a"].requests == 1)
        clock.advance(on_worker_s)
        gate.set()
        if retried:
            done = await task
            assert (done.worker, done.attempts) == ("b", 2)
        else:
            with pytest.raises(DeadlineExceededError, match="after 1 failed attempt"):
                await task

    run(behaviours, body, clock=clock, policy=BalancingPolicy.ROUND_ROBIN)
    assert behaviours["b"].requests == (1 if retried else 0)


def test_queue_wait_and_latency_are_measured_on_the_dispatchers_clock() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    behaviours = {"a": Behaviour(gate=gate)}

    async def body(d: Dispatcher) -> None:
        first = asyncio.create_task(d.complete(payload()))
        await settle(lambda: behaviours["a"].requests == 1)
        second = asyncio.create_task(d.complete(payload()))
        await settle(lambda: d.queued == 1)
        clock.advance(1.5)
        gate.set()
        one, two = await asyncio.gather(first, second)
        assert (one.queue_wait_s, one.latency_s) == (0.0, 1.5)
        assert (two.queue_wait_s, two.latency_s) == (1.5, 1.5)  # all of it queued; the worker took no clock time
        assert d.workers()[0].latency_ewma_ms == 1500.0  # the balancer's signal runs on the same clock

    workers = [WorkerConfig(url="http://a/v1", name="a", models=["m"], max_concurrency=1)]
    run(behaviours, body, workers=workers, clock=clock)


def test_connection_refused_fails_over_and_takes_the_worker_out() -> None:
    behaviours = {"dead": Behaviour(mode="connect_error"), "live": Behaviour()}

    async def body(d: Dispatcher) -> None:
        results = [await d.complete(payload()) for _ in range(10)]
        assert {r.worker for r in results} == {"live"}
        assert max(r.attempts for r in results) == 2
        dead = next(w for w in d.workers() if w.name == "dead")
        assert not dead.healthy

    run(behaviours, body, policy=BalancingPolicy.ROUND_ROBIN)
    assert behaviours["dead"].requests == 0  # refused at connect: never saw a body


def test_health_checks_bring_a_worker_back() -> None:
    behaviours = {"a": Behaviour(), "b": Behaviour()}

    async def body(d: Dispatcher) -> None:
        def b_healthy() -> bool:
            return next(w for w in d.workers() if w.name == "b").healthy

        behaviours["b"].healthy = False
        await eventually(lambda: not b_healthy())  # only the background loop can notice: nothing is sent to b
        before = behaviours["b"].requests
        await asyncio.gather(*(d.complete(payload()) for _ in range(10)))
        assert behaviours["b"].requests == before
        behaviours["b"].healthy = True
        await eventually(b_healthy)
        await asyncio.gather(*(d.complete(payload()) for _ in range(10)))
        assert behaviours["b"].requests > before

    run(behaviours, body, health_checks=True, health_interval_s=0.03, unhealthy_after=1)


def test_breaker_opens_after_failures_then_probes_once() -> None:
    clock = FakeClock()
    behaviours = {"flaky": Behaviour(mode="http_500"), "ok": Behaviour()}

    async def body(d: Dispatcher) -> None:
        def breaker() -> str:
            return next(w for w in d.workers() if w.name == "flaky").breaker

        for _ in range(6):
            await d.complete(payload())
        assert breaker() == "open"
        seen = behaviours["flaky"].requests
        assert seen == 2  # breaker_threshold failures, then nothing
        for _ in range(6):
            await d.complete(payload())
        assert behaviours["flaky"].requests == seen, "an open breaker sends nothing"
        behaviours["flaky"].mode = "ok"
        clock.advance(9.0)  # not yet breaker_reset_s
        for _ in range(6):
            await d.complete(payload())
        assert behaviours["flaky"].requests == seen and breaker() == "open"
        clock.advance(1.0)  # reset_s reached: one probe may go, and only one while it runs
        gate = asyncio.Event()
        behaviours["flaky"].gate = gate
        ok_before = behaviours["ok"].requests
        tasks = [asyncio.create_task(d.complete(payload())) for _ in range(6)]
        await settle(lambda: sum(t.done() for t in tasks) == 5)  # all but the probe, held at the flaky worker
        assert behaviours["ok"].requests == ok_before + 5
        assert behaviours["flaky"].requests == seen + 1
        assert breaker() == "half_open"
        gate.set()
        await asyncio.gather(*tasks)
        assert breaker() == "closed"

    run(behaviours, body, clock=clock, policy=BalancingPolicy.ROUND_ROBIN, breaker_threshold=2, breaker_reset_s=10.0)


def test_a_hanging_worker_hits_the_deadline_and_opens_its_breaker() -> None:
    async def body(d: Dispatcher) -> None:
        for _ in range(2):
            # A worker that never answers is cut off by the deadline's real timeout; the guard only catches a hang.
            async with asyncio.timeout(10):
                with pytest.raises(DeadlineExceededError, match="did not answer within the deadline"):
                    await d.complete(payload(), deadline_s=0.1)
        assert d.workers()[0].breaker == "open"
        with pytest.raises(NoWorkerError):
            await d.complete(payload(), deadline_s=0.1)

    run({"a": Behaviour(mode="hang")}, body, breaker_threshold=2)


def test_request_errors_are_not_retried_elsewhere() -> None:
    behaviours = {"a": Behaviour(mode="http_400"), "b": Behaviour(mode="http_400")}

    async def body(d: Dispatcher) -> None:
        with pytest.raises(InvalidChatRequestError, match="bad field"):
            await d.complete(payload())

    run(behaviours, body)
    assert behaviours["a"].requests + behaviours["b"].requests == 1


def test_unknown_model_and_empty_request() -> None:
    async def body(d: Dispatcher) -> None:
        with pytest.raises(ModelNotFoundError, match="served: m"):
            await d.complete(payload("other"))
        with pytest.raises(InvalidChatRequestError):
            await d.complete({"model": "m", "messages": []})

    run({"a": Behaviour()}, body)


def test_malformed_tool_calls_are_an_error_and_counted() -> None:
    async def body(d: Dispatcher) -> None:
        with pytest.raises(MalformedToolCallError):
            await d.complete(payload(tools=[{"type": "function", "function": {"name": "f"}}]))
        assert b'tandem_llm_malformed_tool_calls_total{worker="a"} 1.0' in d.metrics.render()

    run({"a": Behaviour(mode="malformed")}, body)


def test_tool_calls_returned_as_text_become_tool_calls() -> None:
    tools = [{"type": "function", "function": {"name": "submit_ranking"}}]

    async def body(d: Dispatcher) -> None:
        done = await d.complete(payload(tools=tools))
        call = done.message["tool_calls"][0]
        assert call["function"]["name"] == "submit_ranking"
        assert done.body["choices"][0]["finish_reason"] == "tool_calls"
        assert done.message["content"] is None

    run({"a": Behaviour(mode="tool_call")}, body)


def test_stream_retries_before_the_first_token_and_fails_clearly_after() -> None:
    async def body(d: Dispatcher) -> None:
        texts = [c["choices"][0]["delta"].get("content", "") async for c in d.stream(payload())]
        assert texts[0].startswith("good:")  # the refused worker was skipped before any token
        broken = d.stream(payload(model="b"))
        first = await anext(broken)
        assert first["choices"][0]["delta"]["content"].startswith("brk:")
        with pytest.raises(StreamInterruptedError, match="brk"):
            await anext(broken)

    behaviours = {
        "dead": Behaviour(mode="connect_error"),
        "good": Behaviour(),
        "brk": Behaviour(mode="break_after_first", models=("b",), delay_s=0.01),
    }
    run(behaviours, body, policy=BalancingPolicy.ROUND_ROBIN)


def test_a_stalled_stream_ends_with_an_error_not_a_hang() -> None:
    # The fake clock stands still, so the deadline (30 s on it) cannot be what ends the stream: the idle timeout must.
    clock = FakeClock()

    async def body(d: Dispatcher) -> None:
        stream = d.stream(payload())
        await anext(stream)
        async with asyncio.timeout(10):  # a guard against a hang, far above stream_idle_timeout_s
            with pytest.raises(StreamInterruptedError, match=r"sent nothing for 0\.1s"):
                await anext(stream)
        assert d.workers()[0].in_flight == 0
        assert d.workers()[0].failures == 1

    run({"a": Behaviour(delay_s=30)}, body, clock=clock, stream_idle_timeout_s=0.1)


def test_abandoned_stream_frees_its_slot() -> None:
    async def body(d: Dispatcher) -> None:
        stream = d.stream(payload())
        await anext(stream)
        assert d.workers()[0].in_flight == 1
        await stream.aclose()
        assert d.workers()[0].in_flight == 0
        assert d.workers()[0].breaker == "closed"

    run({"a": Behaviour(delay_s=5)}, body)


def test_workers_can_be_added_and_removed_at_run_time() -> None:
    behaviours = {"a": Behaviour(delay_s=0.01), "b": Behaviour(delay_s=0.01)}

    async def body(d: Dispatcher) -> None:
        await asyncio.gather(*(d.complete(payload()) for _ in range(8)))
        assert behaviours["b"].requests == 0
        d.add_worker(WorkerConfig(url="http://b/v1", name="b", models=["m"], max_concurrency=4))
        await asyncio.gather(*(d.complete(payload()) for _ in range(16)))
        assert behaviours["b"].requests > 0
        d.remove_worker("a")
        seen = behaviours["a"].requests
        await asyncio.gather(*(d.complete(payload()) for _ in range(8)))
        assert behaviours["a"].requests == seen
        assert [w.name for w in d.workers()] == ["b"]

    workers = [WorkerConfig(url="http://a/v1", name="a", models=["m"], max_concurrency=4)]
    run(behaviours, body, workers=workers, policy=BalancingPolicy.LEAST_OUTSTANDING)


def test_models_are_discovered_from_the_worker() -> None:
    async def body(d: Dispatcher) -> None:
        assert d.models() == {"base", "ranker"}
        done = await d.complete(payload("ranker"))
        assert done.worker == "a"

    workers = [WorkerConfig(url="http://a/v1", name="a")]  # no models given
    run({"a": Behaviour(models=("base", "ranker"))}, body, workers=workers, health_checks=True)


@pytest.mark.parametrize("policy", list(BalancingPolicy))
def test_equal_workers_share_traffic_fairly(policy: BalancingPolicy) -> None:
    hosts = ["w0", "w1", "w2", "w3"]
    behaviours = {h: Behaviour(delay_s=0.004) for h in hosts}

    async def body(d: Dispatcher) -> None:
        sem = asyncio.Semaphore(6)  # moderate load: the regime where "least busy" used to herd

        async def one() -> None:
            async with sem:
                await d.complete(payload())

        await asyncio.gather(*(one() for _ in range(400)))

    # On the fake clock every worker's latency is what the script says, never a stall of this machine: one stall
    # could make a worker look slow for the rest of the test (peak EWMA) and skew the shares.
    run(behaviours, body, clock=FakeClock(), policy=policy)
    shares = Counter({h: b.requests for h, b in behaviours.items()})
    assert sum(shares.values()) == 400
    assert max(shares.values()) / (400 / len(hosts)) <= 1.5, shares


def test_power_of_two_shuns_a_slow_worker() -> None:
    behaviours = {"fast1": Behaviour(delay_s=0.005), "fast2": Behaviour(delay_s=0.005), "slow": Behaviour(delay_s=0.08)}

    async def body(d: Dispatcher) -> None:
        sem = asyncio.Semaphore(4)

        async def one() -> None:
            async with sem:
                await d.complete(payload())

        await asyncio.gather(*(one() for _ in range(300)))

    # The real clock on purpose: on one fake clock that every answer advances, a fast request overlapping a slow
    # one would be charged the slow delay too, blurring the very signal under test.
    run(behaviours, body, policy=BalancingPolicy.POWER_OF_TWO)
    assert behaviours["slow"].requests < 300 / 3 / 2, {h: b.requests for h, b in behaviours.items()}


def test_metrics_show_queue_traffic_and_ttft() -> None:
    async def body(d: Dispatcher) -> bytes:
        await d.complete(payload())
        _ = [c async for c in d.stream(payload())]
        return d.metrics.render()

    text = run({"a": Behaviour()}, body).decode()
    for name in (
        "tandem_llm_queue_depth",
        "tandem_llm_queue_wait_seconds_count",
        'tandem_llm_worker_in_flight{worker="a"} 0.0',
        'tandem_llm_requests_total{outcome="ok",worker="a"} 2.0',
        'tandem_llm_time_to_first_token_seconds_count{worker="a"} 1.0',
    ):
        assert name in text, name


def test_closing_while_a_request_runs_ends_it_cleanly(start_worker: Callable[..., Any]) -> None:
    from llms.worker.delay import DelayModel

    worker = start_worker(model_name="m", delay=DelayModel.parse("constant:ms=1000"))

    async def main() -> None:
        d = Dispatcher(DispatcherConfig(), [WorkerConfig(url=worker.url, name="a")])
        await d.start()
        task = asyncio.create_task(d.complete(payload()))
        await asyncio.sleep(0.2)
        await d.aclose()
        with pytest.raises(NoWorkerError, match=r"shutting down|not running"):
            await task
        assert d.workers()[0].breaker == "closed"
        assert d.workers()[0].failures == 0

    asyncio.run(main())
