"""Fixtures for the llms tests: real embedded workers (uvicorn, in process) over simulated engines."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from eval.process import free_port
from llms.worker.engine import GenerationEvent, GenerationRequest
from llms.worker.simulated import SimulatedEngine


class RecordingEngine(SimulatedEngine):
    """A simulated engine that keeps every request it was asked to generate (sampling knobs, messages, tools)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self.requests.append(request)
        async for event in super().generate(request):
            yield event


@dataclass
class EmbeddedWorker:
    url: str  # the OpenAI base URL, …/v1
    engine: RecordingEngine


@pytest.fixture(scope="session")
def start_worker() -> Iterator[Callable[..., EmbeddedWorker]]:
    """Start an embedded worker (FastAPI app + uvicorn in a thread) per call; all stop at the session's end.

    Keyword arguments configure its :class:`RecordingEngine` (``model_name``, ``reply``, ``adapters``, …).
    """
    import uvicorn

    from api.worker.app import create_worker_app
    from llms.worker.service import WorkerService

    running: list[tuple[Any, threading.Thread]] = []

    def start(**engine_kwargs: Any) -> EmbeddedWorker:
        engine = RecordingEngine(**engine_kwargs)
        port = free_port()
        app = create_worker_app(WorkerService(engine))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the embedded worker did not start")
            time.sleep(0.01)
        return EmbeddedWorker(f"http://127.0.0.1:{port}/v1", engine)

    yield start
    for server, _ in running:
        server.should_exit = True
    for _, thread in running:
        thread.join(timeout=10)
