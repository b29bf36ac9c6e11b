"""Sessions in Redis: every replica of the API sees every conversation.

A session is one JSON value under ``<prefix>session:<id>`` that expires after ``ttl_s`` idle
(``PEXPIRE`` again on each use by its owner, ``SET … PX`` on each save). A turn holds the
session's Redis lock (``<prefix>session-lock:<id>``, redis-py's :class:`redis.asyncio.lock.Lock`)
from before it loads the session until after it saves it, so two replicas never interleave
turns of one session. The lock expires after ``lock_timeout_s`` on its own: a replica killed in
the middle of a turn blocks its session for at most that long. Keep it above the chat turn's
deadline, or a slow turn's lock lapses and a concurrent turn's update can be lost.

Every Redis failure becomes :class:`rag.errors.SessionStoreUnavailableError`; the detail (host,
port) goes to the log, not to the caller.

Example:
    >>> store = RedisSessionStore.from_url("redis://localhost:6379/0", ttl_s=3600, max_turns=8)  # doctest: +SKIP
    >>> async with store.turn(None, owner="platform") as session:  # doctest: +SKIP
    ...     session.record(turn)
    ...     await store.save(session)
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import ClassVar, Literal

from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockNotOwnedError, RedisError

from rag.errors import SessionStoreUnavailableError
from rag.session import Session, Turn, not_found
from rag.terms import TurnTerms

__all__ = ["RedisSessionStore"]

log = logging.getLogger("tandem.sessions")


class _Stored(BaseModel):
    """A session as Redis holds it (``v`` is the format: another one reads as expired, never as garbage)."""

    v: Literal[1] = 1
    owner: str | None
    turns: list[Turn]
    shown: list[str]
    terms: TurnTerms | None


@contextmanager
def _translated(doing: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        log.warning("session store failed to %s: %s: %s", doing, type(exc).__name__, exc)
        raise SessionStoreUnavailableError(
            f"the session store is unavailable (could not {doing}); retry shortly"
        ) from exc


class RedisSessionStore:
    """Sessions in Redis with an idle TTL, a cap on turns, owners, and a lock per session.

    Example:
        >>> store = RedisSessionStore(Redis(), prefix="tandem:", ttl_s=600)  # doctest: +SKIP
    """

    shared: ClassVar[bool] = True

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "tandem:",
        ttl_s: float = 3600.0,
        max_turns: int = 8,
        lock_timeout_s: float = 75.0,
        lock_poll_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.max_turns = max_turns
        self.lock_timeout_s = lock_timeout_s
        self.lock_poll_s = lock_poll_s
        self._clock = clock  # stamps Session.last_used only; expiry itself is Redis's

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_s: float = 2.0,
        prefix: str = "tandem:",
        ttl_s: float = 3600.0,
        max_turns: int = 8,
        lock_timeout_s: float = 75.0,
    ) -> RedisSessionStore:
        """A store over a new client for ``url`` (``redis://[:password@]host:port/db``, ``rediss://`` for TLS).

        ``timeout_s`` bounds connecting and each command, so a Redis that is gone fails a turn quickly.
        """
        client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return cls(client, prefix=prefix, ttl_s=ttl_s, max_turns=max_turns, lock_timeout_s=lock_timeout_s)

    def key(self, session_id: str) -> str:
        """The Redis key holding the session (tests inspect its TTL)."""
        return f"{self.prefix}session:{session_id}"

    def lock_key(self, session_id: str) -> str:
        return f"{self.prefix}session-lock:{session_id}"

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

    @asynccontextmanager
    async def turn(self, session_id: str | None, *, owner: str | None = None) -> AsyncIterator[Session]:
        sid = uuid.uuid4().hex if session_id is None else session_id
        # One Lock object per turn, its token on the object: thread-local tokens mean nothing to coroutines.
        lock = Lock(self.client, self.lock_key(sid), timeout=self.lock_timeout_s, sleep=self.lock_poll_s,
                    thread_local=False)  # fmt: skip
        with _translated("lock the session"):
            # Waits as long as another turn of this session holds it; the chat deadline bounds the wait.
            await lock.acquire()
        try:
            if session_id is None:
                session = Session(sid, self.max_turns, owner=owner, last_used=self._clock())
                await self.save(session)  # the id exists from now on, as the in-process store's does
            else:
                session = await self._load(sid, owner)
            yield session
        finally:
            await self._release(lock, sid)

    async def _load(self, session_id: str, owner: str | None) -> Session:
        key = self.key(session_id)
        with _translated("load the session"):
            raw = await self.client.get(key)
        if raw is None:
            raise not_found(session_id)
        try:
            stored = _Stored.model_validate_json(raw)
        except ValidationError as exc:
            log.warning("session %s is unreadable (%s errors); treated as expired", session_id, exc.error_count())
            raise not_found(session_id) from None
        if stored.owner != owner:
            raise not_found(session_id)  # a stranger neither finds it nor keeps it alive
        with _translated("refresh the session"):
            await self.client.pexpire(key, self._ttl_ms)
        session = Session(session_id, self.max_turns, owner=owner, last_used=self._clock())
        session.turns = deque(stored.turns[-self.max_turns :])
        session.shown = set(stored.shown)
        session.terms = stored.terms
        return session

    async def save(self, session: Session) -> None:
        stored = _Stored(owner=session.owner, turns=list(session.turns), shown=sorted(session.shown),
                         terms=session.terms)  # fmt: skip
        with _translated("save the session"):
            await self.client.set(self.key(session.session_id), stored.model_dump_json(), px=self._ttl_ms)

    async def _release(self, lock: Lock, session_id: str) -> None:
        try:
            await lock.release()
        except LockNotOwnedError:
            # The turn outlived lock_timeout_s: another turn may have run beside it (see the module's note).
            log.warning("the lock of session %s expired before its turn ended", session_id)
        except RedisError as exc:
            log.warning("could not release the lock of session %s (%s); it expires by itself", session_id, exc)

    async def ping(self) -> None:
        with _translated("answer a ping"):
            await self.client.ping()

    async def aclose(self) -> None:
        await self.client.aclose()
