"""SIGTERM is a clean stop: in-flight requests and SSE streams finish, new connections are refused, exit 0.

A real ``tandem serve`` process over a small index, its LLM calls going to a SIMULATED worker process
whose every answer takes a fixed few seconds, so that requests are in flight when the signal arrives.
The in-process tests drive the same server class without a signal (uvicorn's handler is only installed
on the main thread) and with a scripted, gated LLM, for what must be decided by the test, not by time:
``/readyz`` turning 503 while the service still answers during ``shutdown_delay_s``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eval.process import Service, free_port, wait_http
from tests.api.conftest import API_KEY
from tests.support.clock import FakeClock
from tests.support.processes import tandem_command, tandem_env

HEADERS = {"X-API-Key": API_KEY}
WORKER_DELAY_MS = 3000  # each simulated LLM answer: long enough that a turn is surely mid-way at the signal
GUARD_S = 300.0  # hang guards, never measurements


def _wait_for(condition: Callable[[], bool], what: str, guard_s: float = GUARD_S) -> None:
    deadline = time.monotonic() + guard_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _log_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def _logged(path: Path, message: str) -> bool:
    return any(message in line for line in _log_lines(path))


def sse_blocks(text: str) -> list[dict[str, str]]:
    """Each SSE event as its fields; an event cut in the middle would lack its ``data`` or its end."""
    blocks = []
    for block in text.split("\n\n")[:-1]:  # the part after the last blank line is an unfinished event
        blocks.append(dict(line.split(": ", 1) for line in block.splitlines() if ": " in line))
    return blocks


@dataclass
class Call:
    """One request made in a thread: the chunks of its body as they came, its status, and how it ended."""

    method: str
    url: str
    body: dict[str, Any]
    started: threading.Event = field(default_factory=threading.Event)  # the first body chunk is here
    status: int | None = None
    text: str = ""
    error: str | None = None
    thread: threading.Thread | None = None

    def start(self) -> Call:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            with (
                httpx.Client(headers=HEADERS, timeout=GUARD_S) as client,
                client.stream(self.method, self.url, json=self.body) as response,
            ):
                self.status = response.status_code
                for chunk in response.iter_text():
                    self.text += chunk
                    self.started.set()
        except httpx.HTTPError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.started.set()

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(timeout=GUARD_S)
        assert not self.thread.is_alive(), f"{self.url} never ended"


@pytest.fixture
def simulated_worker(tmp_path: Path) -> Iterator[str]:
    """A SIMULATED LLM worker process serving both roles' model names, every answer taking WORKER_DELAY_MS."""
    port = free_port()
    command = tandem_command(
        "worker", "--simulate", "--port", str(port), "--served-name", "tandem-base", "--adapter", "tandem-ranker",
        "--delay-model", f"constant:ms={WORKER_DELAY_MS}",
    )  # fmt: skip
    worker = Service("simulated worker", command, tmp_path / "worker.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", worker, timeout_s=GUARD_S)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        worker.stop()


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def _in_flight(base: str) -> int:
    return round(_metric(httpx.get(base + "/metrics", timeout=30).text, "tandem_http_in_flight"))


def _worker_counts(worker_v1: str) -> tuple[int, int, int]:
    """The simulated worker's answered (ok), in-flight and failed chat completions so far."""
    text = httpx.get(worker_v1.removesuffix("/v1") + "/metrics", timeout=30).text
    total = _metric(text, "tandem_worker_requests_total")
    ok = _metric(text, "tandem_worker_requests_total", outcome="ok")
    return round(ok), round(_metric(text, "tandem_worker_in_flight")), round(total - ok)


def test_sigterm_finishes_requests_and_streams_in_flight_refuses_new_ones_and_exits_0(
    api_home: Path, small_catalogue_dir: Path, tiny_tower_dir: Path, simulated_worker: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(api_home, home)
    env = tandem_env(
        home,
        image_checkpoint=tiny_tower_dir,
        CATALOGUE__PATH=str(small_catalogue_dir),
        API__KEYS=API_KEY,
        API__SHUTDOWN_GRACE_S="120",  # far above what the calls in flight need: none is cut
        LLM__WORKERS=json.dumps([{"url": simulated_worker, "name": "simulated"}]),
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    api = Service("tandem serve", tandem_command("serve", "--port", str(port), "--no-embedded-llm"), log, env=env)
    try:
        wait_http(base + "/readyz", api, timeout_s=GUARD_S)
        _wait_for(lambda: httpx.get(base + "/readyz", timeout=30).json()["parts"]["llm"], "the worker to join")

        chat = Call("POST", base + "/v1/chat", {"message": {"text": "navy formal shirts for men"}, "top_k": 3,
                                                 "stream": True}).start()  # fmt: skip
        _wait_for(lambda: "event: candidates" in chat.text or chat.error is not None, "the chat's first event")
        completion = {"model": "tandem-base", "messages": [{"role": "user", "content": "say hello"}],
                      "max_tokens": 8}  # fmt: skip
        llm_stream = Call("POST", base + "/v1/llm/chat/completions", {**completion, "stream": True}).start()
        llm_plain = Call("POST", base + "/v1/llm/chat/completions", completion).start()
        _wait_for(lambda: _in_flight(base) == 3, "three requests in flight")
        # Still in flight: the chat has its ranker and explainer calls ahead, the others their one answer.
        assert "event: done" not in chat.text and llm_stream.status is None and llm_plain.status is None

        answered_before, in_flight_before, _ = _worker_counts(simulated_worker)
        api.proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: _logged(log, "shutting down"), "the service to start its shutdown")
        with pytest.raises(httpx.ConnectError):
            httpx.get(base + "/readyz", timeout=30)  # the listener is closed: a balancer fails over at once

        for call in (chat, llm_stream, llm_plain):
            call.join()
        code = api.proc.wait(timeout=GUARD_S)
        answered, _, worker_failed = _worker_counts(simulated_worker)
        after_signal = answered - answered_before - in_flight_before
    finally:
        api.stop()

    lines = _log_lines(log)
    assert code == 0, "\n".join(lines[-30:])
    for call in (chat, llm_stream, llm_plain):
        assert (call.status, call.error) == (200, None), (call.url, call.status, call.error, call.text[-500:])

    # The chat stream ran to its end after the signal: the ranking and the explanation came, then done.
    events = [b.get("event") for b in sse_blocks(chat.text)]
    assert events[0] == "candidates" and events[-1] == "done", events
    assert "ranking" in events and "token" in events and "error" not in events, events
    done = json.loads(sse_blocks(chat.text)[-1]["data"])
    assert len(done["items"]) == 3 and done["explanation"].strip()
    # The explainer's call was made after the signal, through a dispatcher and a worker that still served.
    assert after_signal >= 1 and worker_failed == 0, (after_signal, worker_failed)

    # The gateway's stream ended with OpenAI's sentinel; the plain completion came whole.
    blocks = sse_blocks(llm_stream.text)
    assert blocks[-1]["data"] == "[DONE]" and len(blocks) >= 2
    assert all(json.loads(b["data"])["object"] == "chat.completion.chunk" for b in blocks[:-1])
    assert json.loads(llm_plain.text)["choices"][0]["message"]["content"]

    # In the log: the shutdown began, then the service stopped (after the lifespan closed its resources).
    order = [m for line in lines for m in ("shutting down", "Finished server process", '"stopped"') if m in line]
    assert order == ["shutting down", "Finished server process", '"stopped"'], order


def test_during_the_shutdown_delay_readyz_answers_503_while_requests_are_still_served(
    settings_factory: Callable[..., Any], shared_encoders: None
) -> None:
    import uvicorn

    from api.http.app import create_app
    from api.http.server import graceful_server

    app = create_app(settings_factory())
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=30)  # fmt: skip
    clock = FakeClock()
    server = graceful_server(app, config, delay_s=5.0, clock=clock)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started or not thread.is_alive(), "the server to start")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=GUARD_S) as client:
            assert client.get("/readyz").status_code == 200
            server.handle_exit(signal.SIGTERM, None)  # what the signal calls (handlers exist on the main thread only)
            ready = client.get("/readyz")
            assert (ready.status_code, ready.json()["detail"]) == (503, {"reason": "shutting down"})
            # A balancer still sending during the delay is served, on a new connection too.
            assert client.post("/v1/recommendations", json={"text": "red kurta", "top_k": 3}).status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=GUARD_S).status_code == 200
            server.handle_exit(signal.SIGTERM, None)  # a second SIGTERM does not cut the delay short
            clock.advance(4.9)
            assert client.get("/healthz").status_code == 200 and thread.is_alive()
            clock.advance(0.1)  # the delay is over: uvicorn's shutdown closes the listener and returns
            thread.join(timeout=GUARD_S)
        assert not thread.is_alive()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=GUARD_S)
    finally:
        server.should_exit = True
        thread.join(timeout=GUARD_S)


def test_the_embedded_worker_is_out_of_reach_of_signals_to_the_api_group_and_stops_after_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    from api.settings import Settings
    from api.worker.embedded import embedded_llm_worker

    # The real command loads a model; the simulated engine exercises the same process handling.
    monkeypatch.setattr(
        "api.worker.embedded.worker_command",
        lambda settings, port: tandem_command("worker", "--simulate", "--port", str(port), "--exit-with-parent"),
    )
    with embedded_llm_worker(Settings(home=tmp_path)) as config:
        url = config.url.removesuffix("/v1")
        _wait_for(lambda: _answers(url + "/health"), "the embedded worker")
        port = config.url.rsplit(":", 1)[1].removesuffix("/v1")
        (child,) = [c for c in psutil.Process().children() if port in c.cmdline()]
        # Ctrl-C, or a SIGTERM to the API's process group, reaches the API alone: the worker keeps serving
        # the turns the API drains, and the API stops it when the drain is over.
        assert os.getsid(child.pid) != os.getsid(0) and os.getpgid(child.pid) != os.getpgid(0)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert not _answers(url + "/health")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
