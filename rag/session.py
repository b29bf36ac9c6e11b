"""Conversation sessions: bounded history, the refined key terms, and what was already shown.

Only the last ``max_turns`` turns are kept; older ones are dropped, but what they asked for
lives on in the session's :class:`rag.terms.TurnTerms` (the conversation's running summary).
Sessions expire after ``ttl_s`` idle, so storage stays bounded whatever clients do.

A :class:`SessionStore` keeps them between turns. A turn holds its session exclusively from
:meth:`SessionStore.turn` (load and lock) to the end of that block, and calls
:meth:`SessionStore.save` once it has recorded itself, so turns of one session never
interleave. :class:`MemorySessionStore` (the default) keeps them in this process, at most
``max_sessions`` of them (least recently used dropped first); ``rag.session_redis`` keeps them
in Redis, where every replica of the API sees them.

A session belongs to the caller that opened it (``owner``: a non-secret id such as an API
key's name, never a key): to anyone else it does not exist, with the very error an unknown
id gets, so session ids cannot be probed across callers.

Example:
    >>> store = MemorySessionStore(max_sessions=100)
    >>> session = store.open(None)
    >>> store.open(session.session_id) is session
    True
    >>> mine = store.open(None, owner="platform")  # another owner gets SessionNotFoundError for this id
    >>> store.open(mine.session_id, owner="platform") is mine
    True
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from rag.errors import SessionNotFoundError
from rag.terms import TurnTerms

__all__ = ["MemorySessionStore", "Session", "SessionStore", "Turn", "not_found"]


def not_found(session_id: str) -> SessionNotFoundError:
    """The one error for an unknown, expired or someone else's session, whatever the store."""
    return SessionNotFoundError(f"no session {session_id!r}: it expired or never existed; start a new one")


@dataclass(frozen=True)
class Turn:
    """One exchange: what the buyer said, the terms it led to, and the products returned."""

    text: str
    had_image: bool
    terms: TurnTerms
    product_ids: tuple[str, ...]


@dataclass
class Session:
    """One buyer conversation."""

    session_id: str
    max_turns: int = 8
    owner: str | None = None  # who opened it (a caller id, never a secret); None: a service without callers
    turns: deque[Turn] = field(default_factory=deque)
    shown: set[str] = field(default_factory=set)
    terms: TurnTerms | None = None
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one turn at a time (in-process; Redis locks there)

    def record(self, turn: Turn) -> None:
        self.turns.append(turn)
        while len(self.turns) > self.max_turns:
            self.turns.popleft()
        self.terms = turn.terms
        self.shown.update(turn.product_ids)

    @property
    def last_products(self) -> tuple[str, ...]:
        return self.turns[-1].product_ids if self.turns else ()


class SessionStore(Protocol):
    """Where sessions live between turns; a turn holds its session from load to save.

    Example:
        >>> async with store.turn(request.session_id, owner="platform") as session:  # doctest: +SKIP
        ...     session.record(turn)
        ...     await store.save(session)
    """

    #: Whether other processes see these sessions (a shared store is reported by readiness).
    shared: ClassVar[bool]

    def turn(self, session_id: str | None, *, owner: str | None = None) -> AbstractAsyncContextManager[Session]:
        """``owner``'s session (a new one when ``session_id`` is None), held exclusively for the block.

        Raises :class:`rag.errors.SessionNotFoundError` for an unknown, expired or another owner's id.
        """
        ...

    async def save(self, session: Session) -> None:
        """Keep what the turn recorded; call it inside :meth:`turn`'s block."""
        ...

    async def ping(self) -> None:
        """Raise :class:`rag.errors.SessionStoreUnavailableError` unless the store answers."""
        ...

    async def aclose(self) -> None: ...


class MemorySessionStore:
    """In-process sessions with LRU eviction and an idle TTL; the turn's lock is an :class:`asyncio.Lock`.

    Example:
        >>> store = MemorySessionStore(max_sessions=1000, ttl_s=600, max_turns=8)
        >>> store.open(None, owner="platform").owner
        'platform'
    """

    shared: ClassVar[bool] = False

    def __init__(
        self,
        *,
        max_sessions: int = 10_000,
        ttl_s: float = 3600.0,
        max_turns: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.max_turns = max_turns
        self._clock = clock  # injectable so tests can expire sessions without sleeping
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self, now: float) -> None:
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_used <= self.ttl_s and len(self._sessions) <= self.max_sessions:
                break
            self._sessions.popitem(last=False)

    def open(self, session_id: str | None, *, owner: str | None = None) -> Session:
        """``owner``'s session with this id, or a new one of theirs when ``session_id`` is None.

        An unknown id and another owner's id are the same error, so one caller cannot learn another's ids.
        """
        now = self._clock()
        self._expire(now)
        if session_id is None:
            session = Session(uuid.uuid4().hex, self.max_turns, owner=owner, last_used=now)
            self._sessions[session.session_id] = session
            self._expire(now)
            return session
        found = self._sessions.get(session_id)
        if found is None or found.owner != owner:
            raise not_found(session_id)
        found.last_used = now
        self._sessions.move_to_end(session_id)
        return found

    @asynccontextmanager
    async def turn(self, session_id: str | None, *, owner: str | None = None) -> AsyncIterator[Session]:
        session = self.open(session_id, owner=owner)
        async with session.lock:
            yield session

    async def save(self, session: Session) -> None:
        """Nothing to do: the turn recorded itself into the very object this store holds."""

    async def ping(self) -> None:
        """Always answers: it is this process."""

    async def aclose(self) -> None:
        self._sessions.clear()
