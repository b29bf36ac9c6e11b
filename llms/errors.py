"""Exception tree of the llms package.

httpx, transformers and peft errors are translated into these at the boundary with
``raise ... from exc``, so the API maps one family onto HTTP statuses in one place
(``api/http/errors.py``) and the RAG pipeline can tell "degrade" from "bug".
"""

from __future__ import annotations

__all__ = [
    "BaseModelError",
    "DeadlineExceededError",
    "EngineError",
    "InvalidChatRequestError",
    "LLMError",
    "MalformedToolCallError",
    "ModelNotFoundError",
    "NoWorkerError",
    "OverloadedError",
    "StreamInterruptedError",
    "WorkerError",
]


class LLMError(Exception):
    """Base class of every error raised by :mod:`llms`."""


class BaseModelError(LLMError):
    """The base model cannot be found, verified, converted or downloaded (a one-line reason)."""


class OverloadedError(LLMError):
    """The dispatcher's queue is full: refused at once instead of waiting (HTTP 429)."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(LLMError):
    """The request's deadline passed while it queued or while a worker worked on it (HTTP 504)."""


class NoWorkerError(LLMError):
    """No healthy worker serves the requested model right now (HTTP 503)."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelNotFoundError(LLMError):
    """No configured worker serves this model or adapter name at all (HTTP 404)."""


class InvalidChatRequestError(LLMError):
    """The request itself is wrong (a worker answered 4xx, or it fails validation); retrying elsewhere cannot help."""


class WorkerError(LLMError):
    """Every attempt failed on a worker (connection refused, 5xx, timeout before the first token) (HTTP 502)."""


class StreamInterruptedError(LLMError):
    """A stream broke after its first token; it cannot be retried without repeating text, so it ends here."""


class MalformedToolCallError(LLMError):
    """The model emitted a tool call that is not valid JSON or names an unknown tool."""

    def __init__(self, message: str, *, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


class EngineError(LLMError):
    """The embedded worker's engine failed to load or to generate."""
