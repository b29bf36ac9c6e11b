"""The pipeline's LLM seam over a :class:`~llms.worker.service.WorkerService` in this process (no HTTP, no queue).

Evaluations and experiments run the same use cases as the service (the RAG pipeline, the
ranker's tool loop) on a local engine; this client gives them the calls the dispatcher
gives the service: ``serves``, ``complete`` (a :class:`~llms.dispatcher.Completion`) and
``stream`` (OpenAI chunks).

Example:
    >>> client = InProcessClient(WorkerService(engine))  # doctest: +SKIP
    >>> (await client.complete({"model": "tandem-base", "messages": [...]})).message["content"]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from llms.client import Completion
from llms.protocol import ChatCompletionRequest
from llms.worker.service import WorkerService

__all__ = ["InProcessClient"]


class InProcessClient:
    """Chat completions answered by a worker service in this process."""

    def __init__(self, service: WorkerService) -> None:
        self.service = service

    def serves(self, model: str) -> bool:
        return model in self.service.model_names()

    async def complete(self, payload: Mapping[str, Any], *, deadline_s: float | None = None) -> Completion:
        t0 = time.monotonic()
        body = await self.service.complete(ChatCompletionRequest.model_validate({**payload, "stream": False}))
        return Completion(body=body, worker="in-process", attempts=1, queue_wait_s=0.0,
                          latency_s=time.monotonic() - t0)  # fmt: skip

    async def stream(
        self, payload: Mapping[str, Any], *, deadline_s: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        request = ChatCompletionRequest.model_validate({**payload, "stream": True})
        async for chunk in self.service.stream(request):
            yield chunk
