"""One behavioural contract for every session store: in this process, and in a real Redis.

Each contract test runs over both stores through a small :class:`Backend`: ``idle`` lets a
session sit unused for some seconds (the in-process store's :class:`FakeClock` moves; in Redis the
key's remaining ``PTTL`` is cut by as much, and at zero or below ``PEXPIRE`` removes it, which is
Redis's own expiry, without sleeping). ``replicas`` are stores that share sessions: for Redis two
clients (two API processes), for the in-process store the one store itself.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol

import pytest
from redis.asyncio import Redis

from eval.process import free_port
from rag.errors import SessionNotFoundError, SessionStoreUnavailableError
from rag.session import MemorySessionStore, Session, SessionStore, Turn
from rag.session_redis import RedisSessionStore
from rag.terms import TurnTerms
from tests.support.clock import FakeClock
from tests.support.redis import RedisServer, redis_fixture  # noqa: F401 - provides the redis_server fixture


def turn(n: int, *product_ids: str, had_image: bool = False) -> Turn:
    terms = TurnTerms(kind="shirts", colour="navy blue" if n % 2 else None, usage="formal", gender="men",
                      words=(f"w{n}", "cotton"), exclude=("puma",), repeat_shown=bool(n % 2),
                      exclude_brands=("u.s. polo",))  # fmt: skip
    return Turn(f"turn {n}", had_image=had_image, terms=terms, product_ids=product_ids)


class Backend(Protocol):
    name: str

    def store(self, *, ttl_s: float = 3600.0, max_turns: int = 8) -> SessionStore: ...

    def replicas(self, n: int, *, max_turns: int = 8) -> list[SessionStore]: ...

    async def idle(self, store: SessionStore, session_id: str, seconds: float) -> None: ...


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self.clock = FakeClock(start=100.0)

    def store(self, *, ttl_s: float = 3600.0, max_turns: int = 8) -> SessionStore:
        return MemorySessionStore(ttl_s=ttl_s, max_turns=max_turns, clock=self.clock)

    def replicas(self, n: int, *, max_turns: int = 8) -> list[SessionStore]:
        one = self.store(max_turns=max_turns)
        return [one] * n  # in-process sessions are shared only within the process

    async def idle(self, store: SessionStore, session_id: str, seconds: float) -> None:
        self.clock.advance(seconds)


class RedisBackend:
    name = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.url = server.url
        self.prefix = f"test-{uuid.uuid4().hex[:8]}:"  # one namespace per test on the shared server

    def store(self, *, ttl_s: float = 3600.0, max_turns: int = 8) -> RedisSessionStore:
        return RedisSessionStore(Redis.from_url(self.url), prefix=self.prefix, ttl_s=ttl_s, max_turns=max_turns,
                                 lock_timeout_s=30.0, lock_poll_s=0.01)  # fmt: skip

    def replicas(self, n: int, *, max_turns: int = 8) -> list[SessionStore]:
        return [self.store(max_turns=max_turns) for _ in range(n)]

    async def idle(self, store: SessionStore, session_id: str, seconds: float) -> None:
        assert isinstance(store, RedisSessionStore)
        key = store.key(session_id)
        left = await store.client.pttl(key)
        if left >= 0:  # -2: already gone
            await store.client.pexpire(key, left - round(seconds * 1000))  # <= 0: Redis removes it


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return MemoryBackend()
    return RedisBackend(request.getfixturevalue("redis_server"))


def run(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(make())


@asynccontextmanager
async def closing(*stores: SessionStore) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for s in {id(s): s for s in stores}.values():
            await s.aclose()


async def new(store: SessionStore, owner: str | None = None) -> str:
    async with store.turn(None, owner=owner) as session:
        return session.session_id


async def opens(store: SessionStore, session_id: str, owner: str | None = None) -> Session:
    async with store.turn(session_id, owner=owner) as session:
        return session


async def record(store: SessionStore, session_id: str, t: Turn, owner: str | None = None) -> None:
    async with store.turn(session_id, owner=owner) as session:
        session.record(t)
        await store.save(session)


def snapshot(session: Session) -> tuple[Any, ...]:
    return session.session_id, session.owner, list(session.turns), session.shown, session.terms, session.max_turns


# ------------------------------------------------------------------ opening


def test_a_new_session_is_empty_and_its_id_finds_it_again(backend: Backend) -> None:
    async def go() -> None:
        store = backend.store(max_turns=3)
        async with closing(store):
            async with store.turn(None, owner="platform") as a:
                assert re.fullmatch(r"[0-9a-f]{32}", a.session_id)
                assert snapshot(a) == (a.session_id, "platform", [], set(), None, 3)
            b = await new(store, owner="platform")
            assert b != a.session_id
            again = await opens(store, a.session_id, owner="platform")
            assert snapshot(again) == snapshot(a)

    run(go)


@pytest.mark.parametrize("session_id", ["no-such-session", "", "0" * 32])
def test_an_unknown_id_is_an_error_not_a_new_session(backend: Backend, session_id: str) -> None:
    async def go() -> None:
        store = backend.store()
        async with closing(store):
            await new(store)
            with pytest.raises(SessionNotFoundError, match=re.escape(repr(session_id))):
                await opens(store, session_id)

    run(go)


# ------------------------------------------------------------------ owners


def test_a_session_opens_only_for_its_owner_with_the_unknown_ids_error(backend: Backend) -> None:
    async def go() -> None:
        store = backend.store()
        async with closing(store):
            mine = await new(store, owner="platform")
            assert (await opens(store, mine, owner="platform")).owner == "platform"
            for stranger in ("other", None, "Platform", "platform "):
                with pytest.raises(SessionNotFoundError) as foreign:
                    await opens(store, mine, owner=stranger)
                with pytest.raises(SessionNotFoundError) as unknown:
                    await opens(store, "f" * 32, owner=stranger)
                assert str(foreign.value).replace(mine, "ID") == str(unknown.value).replace("f" * 32, "ID")
            ownerless = await new(store)  # a service without keys: no owner can take it over
            assert (await opens(store, ownerless)).session_id == ownerless
            with pytest.raises(SessionNotFoundError):
                await opens(store, ownerless, owner="platform")

    run(go)


# ------------------------------------------------------------------ idle TTL


def test_a_session_expires_after_ttl_s_idle_and_each_use_restarts_the_idle_time(backend: Backend) -> None:
    async def go() -> None:
        store = backend.store(ttl_s=10.0)
        async with closing(store):
            sid = await new(store, owner="a")
            for _ in range(5):  # 40 s in all, never idle for more than 8
                await backend.idle(store, sid, 8.0)
                await opens(store, sid, owner="a")
            await record(store, sid, turn(0, "p0"), owner="a")
            await backend.idle(store, sid, 9.5)
            assert (await opens(store, sid, owner="a")).shown == {"p0"}
            await backend.idle(store, sid, 10.5)
            with pytest.raises(SessionNotFoundError):
                await opens(store, sid, owner="a")

    run(go)


def test_a_stranger_does_not_keep_a_session_alive(backend: Backend) -> None:
    async def go() -> None:
        store = backend.store(ttl_s=10.0)
        async with closing(store):
            sid = await new(store, owner="a")
            for _ in range(3):
                await backend.idle(store, sid, 4.0)
                with pytest.raises(SessionNotFoundError):
                    await opens(store, sid, owner="b")
            with pytest.raises(SessionNotFoundError):  # idle 12 s for its owner: expired
                await opens(store, sid, owner="a")

    run(go)


# ------------------------------------------------------------------ what a session keeps


def test_the_turn_cap_shown_and_terms_survive_a_round_trip(backend: Backend) -> None:
    async def go() -> None:
        writer, reader = backend.replicas(2, max_turns=3)
        async with closing(writer, reader):
            sid = await new(writer, owner="o")
            turns = [turn(n, f"p{n}", "common", had_image=n == 3) for n in range(5)]
            for t in turns:
                await record(writer, sid, t, owner="o")
            session = await opens(reader, sid, owner="o")
            assert list(session.turns) == turns[2:]  # every field of every kept turn, terms included
            assert session.terms == turns[-1].terms  # the running summary is the last turn's
            assert session.shown == {"p0", "p1", "p2", "p3", "p4", "common"}  # dropped turns' products too
            assert session.last_products == ("p4", "common")
            assert isinstance(session.turns[0].terms.words, tuple)  # tuples, as TurnTerms compares them

    run(go)


def test_a_turn_that_fails_before_saving_leaves_the_session_as_it_was(backend: Backend) -> None:
    async def go() -> None:
        a, b = backend.replicas(2)
        async with closing(a, b):
            sid = await new(a)
            await record(a, sid, turn(0, "p0"))
            with pytest.raises(RuntimeError, match="boom"):
                async with a.turn(sid) as session:
                    raise RuntimeError("boom")
            session = await opens(b, sid)  # the lock was released, and the session is unchanged
            assert [t.text for t in session.turns] == ["turn 0"]

    run(go)


# ------------------------------------------------------------------ one turn at a time


def test_turns_of_one_session_never_interleave_and_none_is_lost(backend: Backend) -> None:
    async def go() -> None:
        stores = backend.replicas(2, max_turns=20)
        async with closing(*stores):
            sid = await new(stores[0], owner="o")
            log: list[tuple[str, int]] = []

            async def one(n: int) -> None:
                store = stores[n % 2]  # alternating replicas
                async with store.turn(sid, owner="o") as session:
                    log.append(("in", n))
                    seen = len(session.turns)
                    await asyncio.sleep(0.01)  # room for another turn to barge in, were the lock missing
                    session.record(turn(n, f"p{n}"))
                    await store.save(session)
                    assert len(session.turns) == seen + 1
                    log.append(("out", n))

            await asyncio.gather(*(one(n) for n in range(6)))
            assert [n for _, n in log[::2]] == [n for _, n in log[1::2]]  # each "in" followed by its own "out"
            assert [step for step, _ in log] == ["in", "out"] * 6
            session = await opens(stores[1], sid, owner="o")
            assert sorted(t.text for t in session.turns) == sorted(f"turn {n}" for n in range(6))  # no lost update
            assert session.shown == {f"p{n}" for n in range(6)}

    run(go)


# ------------------------------------------------------------------ Redis only


@pytest.fixture
def redis_backend(redis_server: RedisServer) -> RedisBackend:
    return RedisBackend(redis_server)


def test_redis_keeps_the_idle_ttl_on_the_key_and_refreshes_it_on_use(redis_backend: RedisBackend) -> None:
    async def go() -> None:
        store = redis_backend.store(ttl_s=600.0)
        async with closing(store):
            sid = await new(store)
            key, client = store.key(sid), store.client
            assert 0 < await client.pttl(key) <= 600_000
            await client.pexpire(key, 5_000)
            await opens(store, sid)  # a use: the TTL starts again
            assert 5_000 < await client.pttl(key) <= 600_000
            await client.pexpire(key, 5_000)
            await record(store, sid, turn(0, "p0"))  # a save too
            assert 5_000 < await client.pttl(key) <= 600_000
            assert await client.exists(store.lock_key(sid)) == 0  # no lock left behind

    run(go)


def test_redis_expiry_itself_ends_a_session(redis_backend: RedisBackend) -> None:
    async def go() -> None:
        store = redis_backend.store()
        async with closing(store):
            sid = await new(store)
            await store.client.pexpire(store.key(sid), 1)
            for _ in range(500):  # Redis expires the key on its own; poll until it has (a hang guard, not a timer)
                if not await store.client.exists(store.key(sid)):
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(SessionNotFoundError):
                await opens(store, sid)

    run(go)


def test_redis_holds_the_lock_for_the_turn_with_a_timeout(redis_backend: RedisBackend) -> None:
    async def go() -> None:
        store = redis_backend.store()
        async with closing(store):
            sid = await new(store)
            async with store.turn(sid):
                assert 0 < await store.client.pttl(store.lock_key(sid)) <= 30_000
            assert await store.client.exists(store.lock_key(sid)) == 0

    run(go)


def test_an_unreadable_record_is_an_expired_session(redis_backend: RedisBackend) -> None:
    async def go() -> None:
        store = redis_backend.store()
        async with closing(store):
            sid = await new(store)
            await store.client.set(store.key(sid), '{"v": 99, "turns": "garbage"}')
            with pytest.raises(SessionNotFoundError, match=re.escape(repr(sid))):
                await opens(store, sid)

    run(go)


def test_a_redis_that_is_down_is_a_store_error_without_its_address() -> None:
    dead_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def go() -> None:
        store = RedisSessionStore.from_url(dead_url, timeout_s=1.0)
        async with closing(store):
            for attempt in (store.ping(), new(store), opens(store, "0" * 32)):
                with pytest.raises(SessionStoreUnavailableError) as caught:
                    await attempt
                assert "127.0.0.1" not in str(caught.value) and dead_url.rsplit(":", 1)[1] not in str(caught.value)

    run(go)


def test_the_pipeline_keeps_the_store_it_is_given_even_an_empty_one() -> None:
    from rag.pipeline import Pipeline
    from rag.terms import TermVocabulary

    # An empty in-process store is falsy (it has a length): `sessions or default` once dropped the configured
    # limits (TANDEM_CHAT__MAX_TURNS, __SESSION_TTL_S) for the defaults.
    store = MemorySessionStore(max_turns=2, ttl_s=5.0)
    vocabulary = TermVocabulary(kinds=[], colours=[], usages=[])
    pipeline = Pipeline(None, None, None, vocabulary=vocabulary, checker=None, sessions=store)  # type: ignore[arg-type]
    assert pipeline.sessions is store
