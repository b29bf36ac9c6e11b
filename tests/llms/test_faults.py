"""Fault drills against real worker processes and servers: a killed worker, a hung one, a malformed one.

Real processes need real time, but the assertions are about order and counts (no traffic after a
worker is marked out, traffic again once it is back); waits for those states are guarded polls.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eval.process import free_port
from llms.config import BalancingPolicy, DispatcherConfig, WorkerConfig
from llms.dispatcher import Dispatcher
from llms.errors import DeadlineExceededError, LLMError, MalformedToolCallError
from llms.worker.delay import DelayModel
from llms.workers import WorkerSnapshot
from tests.support.waiting import eventually

TANDEM = str(Path(sys.executable).with_name("tandem"))
MSG = [{"role": "user", "content": "cotton tote bags"}]


class WorkerProcess:
    """``tandem worker --simulate`` as a child process on a fixed port (so it can be restarted in place)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        cmd = [TANDEM, "worker", "--simulate", "--served-name", "m", "--port", str(self.port),
               "--delay-model", "constant:ms=40"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, "worker process died"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"worker on {self.port} did not start")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def three_workers() -> Iterator[list[WorkerProcess]]:
    workers = [WorkerProcess(free_port()) for _ in range(3)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready()
        yield workers
    finally:
        for w in workers:
            w.stop()


def test_killing_one_of_three_workers_during_load(three_workers: list[WorkerProcess]) -> None:
    victim = three_workers[2]
    name = f"127.0.0.1:{victim.port}"
    config = DispatcherConfig(policy=BalancingPolicy.LEAST_OUTSTANDING, health_interval_s=0.3, unhealthy_after=1)

    async def main() -> dict[str, int]:
        ok = failed = 0
        stop = asyncio.Event()
        async with Dispatcher(config, [WorkerConfig(url=w.url, max_concurrency=8) for w in three_workers]) as d:

            def victim_now() -> WorkerSnapshot:
                return next(w for w in d.workers() if w.name == name)

            async def client(i: int) -> None:
                nonlocal ok, failed
                while not stop.is_set():
                    body = {"model": "m", "messages": MSG, "max_tokens": 6}
                    try:
                        if i % 2:  # half streamed (the explainer), half not (the ranker)
                            _ = [c async for c in d.stream(body)]
                        else:
                            await d.complete(body)
                        ok += 1
                    except LLMError:
                        failed += 1

            tasks = [asyncio.create_task(client(i)) for i in range(6)]
            await eventually(lambda: victim_now().requests >= 30 and ok >= 100)  # all three take traffic
            await asyncio.to_thread(victim.kill)
            await eventually(lambda: not victim_now().healthy)
            out_with = victim_now().requests
            ok_when_out = ok
            await eventually(lambda: ok >= ok_when_out + 100)  # plenty of traffic while it is out ...
            out_until = victim_now().requests  # ... and none of it for the dead worker
            victim.start()
            await asyncio.to_thread(victim.wait_ready)
            await eventually(lambda: victim_now().healthy and victim_now().requests > out_until)
            stop.set()
            await asyncio.gather(*tasks)
        return {"ok": ok, "failed": failed, "out_with": out_with, "out_until": out_until}

    r = asyncio.run(main())
    total = r["ok"] + r["failed"]
    assert total > 200
    assert r["ok"] / total >= 0.99, r
    assert r["out_until"] == r["out_with"], "the dead worker still got traffic"


def test_a_hung_worker_hits_deadlines_opens_its_breaker_and_traffic_moves_on(
    start_worker: Callable[..., Any],
) -> None:
    hung = start_worker(model_name="m", hang=True)
    good = start_worker(model_name="m", delay=DelayModel.parse("constant:ms=5"))
    config = DispatcherConfig(policy=BalancingPolicy.ROUND_ROBIN, breaker_threshold=2, breaker_reset_s=60)

    async def main() -> None:
        workers = [WorkerConfig(url=hung.url, name="hung"), WorkerConfig(url=good.url, name="good")]
        async with Dispatcher(config, workers) as d:
            outcomes = []
            for _ in range(6):
                try:
                    async with asyncio.timeout(10):  # a hang guard: the 0.3 s deadline must end each call first
                        done = await d.complete({"model": "m", "messages": MSG}, deadline_s=0.3)
                    outcomes.append(done.worker)
                except DeadlineExceededError:
                    outcomes.append("deadline")
            snap = {w.name: w for w in d.workers()}
            assert snap["hung"].breaker == "open"
            assert snap["hung"].healthy, "its /health still answers: only the breaker can catch a hang"
            assert outcomes.count("deadline") == 2
            assert outcomes[-2:] == ["good", "good"]

    asyncio.run(main())


def test_a_worker_with_malformed_tool_calls_gives_a_clear_counted_error(start_worker: Callable[..., Any]) -> None:
    bad = start_worker(model_name="m", reply='<tool_call>{"name": "submit_ranking", "arguments": {"ids": [')
    tools = [{"type": "function", "function": {"name": "submit_ranking", "parameters": {"type": "object"}}}]

    async def main() -> bytes:
        async with Dispatcher(DispatcherConfig(), [WorkerConfig(url=bad.url, name="bad")]) as d:
            for _ in range(3):
                with pytest.raises(MalformedToolCallError, match="malformed"):
                    await d.complete({"model": "m", "messages": MSG, "tools": tools})
            assert d.workers()[0].breaker == "closed"  # the model misbehaved, the server did not
            return d.metrics.render()

    assert b'tandem_llm_malformed_tool_calls_total{worker="bad"} 3.0' in asyncio.run(main())
