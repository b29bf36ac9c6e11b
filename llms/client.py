"""The one LLM seam the use cases call: :class:`ChatClient`, answering with a typed :class:`Completion`.

Two implementations: the dispatcher (:class:`llms.dispatcher.Dispatcher`: the bounded queue,
balancing and failover across workers), which the service injects, and
:class:`llms.in_process.InProcessClient` (a worker service in this process, no HTTP), which
evaluations and experiments inject. Payloads are OpenAI chat-completion bodies.

Example:
    >>> completion = await client.complete({"model": "tandem-base", "messages": [...]})  # doctest: +SKIP
    >>> completion.message["content"], completion.worker  # doctest: +SKIP
    ('A navy shirt…', 'embedded')
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ChatClient", "Completion"]


@dataclass(frozen=True)
class Completion:
    """A non-streamed chat completion and where it came from."""

    body: dict[str, Any]
    worker: str
    attempts: int
    queue_wait_s: float
    latency_s: float

    @property
    def message(self) -> dict[str, Any]:
        """The first choice's message (``content`` and/or ``tool_calls``)."""
        message: dict[str, Any] = self.body["choices"][0]["message"]
        return message


class ChatClient(Protocol):
    """Chat completions by model name: whether a model is served, one answer, or its stream of OpenAI chunks."""

    def serves(self, model: str) -> bool: ...

    async def complete(self, payload: Mapping[str, Any], *, deadline_s: float | None = None) -> Completion: ...

    def stream(
        self, payload: Mapping[str, Any], *, deadline_s: float | None = None
    ) -> AsyncIterator[dict[str, Any]]: ...
