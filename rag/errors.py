"""The RAG pipeline's errors; the API maps them to HTTP in one place (``api/http/errors.py``).

Example:
    >>> issubclass(SessionNotFoundError, RagError)
    True
"""

from __future__ import annotations

__all__ = [
    "InvalidTurnError",
    "RagError",
    "RetrievalUnavailableError",
    "SessionNotFoundError",
    "SessionStoreUnavailableError",
]


class RagError(Exception):
    """Base of every error the pipeline raises."""


class InvalidTurnError(RagError):
    """The turn cannot be answered as asked (no words and no photo, say)."""


class SessionNotFoundError(RagError):
    """The session id is unknown or expired."""


class RetrievalUnavailableError(RagError):
    """Retrieval failed: without candidates there is nothing to rank or explain."""


class SessionStoreUnavailableError(RagError):
    """The shared session store (Redis) did not answer: the turn cannot load or save its session."""
