"""A rolling restart of two replicas behind a proxy loses no request.

Two real ``tandem serve`` processes on loopback, each over its own copy of the index (a Qdrant Edge
shard opens in one process only), behind :mod:`tests.support.proxy`, which fails a request over to
the other replica when one refuses the connection. Steady REST traffic runs through the proxy while
replica 1 gets SIGTERM, exits, starts again and is ready, and then replica 2 the same way.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from eval.process import Service, free_port, wait_http
from tests.support.processes import report_figure, tandem_command, tandem_env
from tests.support.proxy import reverse_proxy

GUARD_S = 300.0  # hang guards, never measurements
QUERIES = [
    {"text": "red kurta for women", "top_k": 5},
    {"text": "navy formal shirt", "top_k": 5, "mode": "flat"},
    {"text": "black sports shoes", "top_k": 3},
]


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@dataclass
class Replica:
    """One ``tandem serve`` process: its own home (a copy of the index) and port, restartable."""

    name: str
    home: Path
    env: dict[str, str]
    port: int
    logs: Path
    service: Service | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        command = tandem_command("serve", "--port", str(self.port), "--no-embedded-llm")
        self.service = Service(self.name, command, self.logs / f"{self.name}-{self.starts}.log", env=self.env)

    def wait_ready(self) -> None:
        assert self.service is not None
        wait_http(self.url + "/readyz", self.service, timeout_s=GUARD_S)

    def terminate(self) -> int:
        assert self.service is not None
        self.service.proc.send_signal(signal.SIGTERM)
        code = self.service.proc.wait(timeout=GUARD_S)
        self.service.stop()  # it has exited: this only closes its log
        return code

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


@dataclass
class Traffic:
    """REST recommendation calls through the proxy, one after another, until stopped: each call's outcome."""

    base: str
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: list[int | str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=GUARD_S) as client:
            i = 0
            while not self.stop.is_set():
                try:
                    response = client.post("/v1/recommendations", json=QUERIES[i % len(QUERIES)])
                    outcome: int | str = response.status_code
                    if outcome == 200 and not response.json()["items"]:
                        outcome = "200 without items"
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with self.lock:
                    self.outcomes.append(outcome)
                i += 1

    def count(self) -> int:
        with self.lock:
            return len(self.outcomes)

    def finish(self) -> list[int | str]:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=GUARD_S)
        return list(self.outcomes)


def test_rolling_restart_of_two_replicas_behind_a_proxy_loses_no_request(
    api_home: Path, small_catalogue_dir: Path, tiny_tower_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    replicas = []
    for name in ("replica-1", "replica-2"):
        home = tmp_path / name
        shutil.copytree(api_home, home)
        # No keys: loopback callers only (the proxy is one) and no per-key rate limit, which this is not about.
        env = tandem_env(home, image_checkpoint=tiny_tower_dir, CATALOGUE__PATH=str(small_catalogue_dir))
        replicas.append(Replica(name, home, env, free_port(), tmp_path))
    traffic: Traffic | None = None
    exit_codes: list[int] = []
    served_while_down: list[int] = []
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        with reverse_proxy([r.url for r in replicas]) as proxy:
            traffic = Traffic(proxy.url)
            traffic.start()
            _wait_for(lambda: min(proxy.snapshot()[0][r.url] for r in replicas) >= 3, "both replicas to serve")
            for replica in replicas:
                mark = traffic.count()
                exit_codes.append(replica.terminate())
                down = traffic.count()
                # While it is down, the other replica answers everything (the proxy fails over)...
                _wait_for(lambda: traffic.count() >= down + 10, "traffic while a replica is down")  # noqa: B023
                replica.start()
                replica.wait_ready()
                served_while_down.append(traffic.count() - down)
                # ...and once it is back, it serves its share again.
                answered = proxy.snapshot()[0][replica.url]
                _wait_for(lambda: proxy.snapshot()[0][replica.url] >= answered + 3, "the restarted replica")  # noqa: B023
                assert traffic.count() > mark
            outcomes = traffic.finish()
            answered, failed_over = proxy.snapshot()
    finally:
        if traffic is not None:
            traffic.stop.set()
        for replica in replicas:
            replica.stop()

    report_figure(request, "requests", len(outcomes))
    report_figure(request, "failed_over", dict(failed_over))
    report_figure(request, "served_while_a_replica_was_down", served_while_down)
    assert exit_codes == [0, 0]
    not_ok = [o for o in outcomes if o != 200]
    assert not_ok == [], not_ok[:10]
    # The proxy did have to fail over from each replica while it was down: the restarts were exercised.
    assert all(failed_over[r.url] >= 1 for r in replicas), failed_over
    assert sum(answered.values()) == len(outcomes)
