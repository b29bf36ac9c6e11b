"""Conversation sessions: bounded history, the refined key terms, and what was already shown.

Only the last ``max_turns`` turns are kept; older ones are dropped, but what they asked for
lives on in the session's :class:`rag.terms.TurnTerms` (the conversation's running summary).
Sessions expire after ``ttl_s`` idle and the store holds at most ``max_sessions`` (least
recently used dropped first), so memory stays bounded whatever clients do.

A session belongs to the caller that opened it (``owner``: a non-secret id such as an API
key's name, never a key): to anyone else it does not exist, with the very error an unknown
id gets, so session ids cannot be probed across callers.

Example:
    >>> store = SessionStore(max_sessions=100)
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
from collections.abc import Callable
from dataclasses import dataclass, field

from rag.errors import SessionNotFoundError
from rag.terms import TurnTerms

__all__ = ["Session", "SessionStore", "Turn"]


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
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one turn at a time per session

    def record(self, turn: Turn) -> None:
        self.turns.append(turn)
        while len(self.turns) > self.max_turns:
            self.turns.popleft()
        self.terms = turn.terms
        self.shown.update(turn.product_ids)

    @property
    def last_products(self) -> tuple[str, ...]:
        return self.turns[-1].product_ids if self.turns else ()


class SessionStore:
    """In-process sessions with LRU eviction and an idle TTL."""

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
            raise SessionNotFoundError(f"no session {session_id!r}: it expired or never existed; start a new one")
        found.last_used = now
        self._sessions.move_to_end(session_id)
        return found
