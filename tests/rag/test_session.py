"""Sessions: bounded history, what was shown, and a store bounded by an idle TTL and LRU eviction.

Time is a :class:`FakeClock`, so expiry is checked at exact instants (the TTL boundary itself
included); a small reference model of the store checks long random runs of opens and clock moves.
"""

from __future__ import annotations

import random
import re

import pytest

from rag.errors import SessionNotFoundError
from rag.session import MemorySessionStore, Session, Turn
from rag.terms import TurnTerms
from tests.support.clock import FakeClock


def turn(n: int, *product_ids: str) -> Turn:
    return Turn(f"turn {n}", had_image=False, terms=TurnTerms(words=(f"w{n}",)), product_ids=product_ids)


# ------------------------------------------------------------------ Session


def test_a_new_session_is_empty() -> None:
    session = Session("s")
    assert (list(session.turns), session.shown, session.terms, session.last_products) == ([], set(), None, ())


def test_history_keeps_the_last_turns_but_remembers_everything_shown() -> None:
    session = Session("s", max_turns=3)
    for n in range(5):
        session.record(turn(n, f"p{n}", "common"))
    assert [t.text for t in session.turns] == ["turn 2", "turn 3", "turn 4"]
    assert session.terms == TurnTerms(words=("w4",))  # the running summary is the last turn's
    assert session.shown == {"p0", "p1", "p2", "p3", "p4", "common"}  # dropped turns' products too
    assert session.last_products == ("p4", "common")


def test_last_products_are_the_last_turns_even_when_it_showed_none() -> None:
    session = Session("s")
    session.record(turn(0, "p0"))
    session.record(turn(1))
    assert session.last_products == ()
    assert session.shown == {"p0"}


def test_a_one_turn_history_keeps_only_the_latest() -> None:
    session = Session("s", max_turns=1)
    session.record(turn(0, "a"))
    session.record(turn(1, "b"))
    assert [t.text for t in session.turns] == ["turn 1"]


# ------------------------------------------------------------------ MemorySessionStore


def test_opening_without_an_id_starts_a_session_and_its_id_finds_it_again() -> None:
    store = MemorySessionStore(max_turns=3, clock=FakeClock())
    a, b = store.open(None), store.open(None)
    assert re.fullmatch(r"[0-9a-f]{32}", a.session_id)
    assert a.session_id != b.session_id
    assert len(store) == 2
    assert store.open(a.session_id) is a
    assert a.max_turns == 3
    assert a.lock is not b.lock  # one session's turn never waits for another's


@pytest.mark.parametrize("session_id", ["no-such-session", "", "0" * 32])
def test_an_unknown_id_is_an_error_not_a_new_session(session_id: str) -> None:
    store = MemorySessionStore(clock=FakeClock())
    store.open(None)
    with pytest.raises(SessionNotFoundError, match=re.escape(repr(session_id))):
        store.open(session_id)
    assert len(store) == 1


@pytest.mark.parametrize("ttl_s", [0.0, 5.0, 3600.0])
def test_a_session_lives_exactly_ttl_s_after_its_last_use(ttl_s: float) -> None:
    clock = FakeClock(start=100.0)
    store = MemorySessionStore(ttl_s=ttl_s, clock=clock)
    session = store.open(None)
    assert session.last_used == 100.0  # stamped by the store's clock, not the real one
    clock.advance(ttl_s)
    assert store.open(session.session_id) is session  # idle for exactly ttl_s: still alive
    clock.advance(ttl_s + 0.5)
    with pytest.raises(SessionNotFoundError):
        store.open(session.session_id)
    assert len(store) == 0


def test_each_use_restarts_the_idle_time() -> None:
    clock = FakeClock()
    store = MemorySessionStore(ttl_s=10.0, clock=clock)
    session = store.open(None)
    for _ in range(5):  # 40 s in all, never idle for more than 8
        clock.advance(8.0)
        assert store.open(session.session_id) is session
        assert session.last_used == clock()


def test_expired_sessions_go_whichever_session_is_opened() -> None:
    clock = FakeClock()
    store = MemorySessionStore(ttl_s=10.0, clock=clock)
    old = [store.open(None) for _ in range(3)]
    clock.advance(6.0)
    young = store.open(None)
    clock.advance(6.0)  # the first three idle 12 s, the young one 6 s
    store.open(young.session_id)
    assert len(store) == 1
    for s in old:
        with pytest.raises(SessionNotFoundError):
            store.open(s.session_id)


def test_a_full_store_drops_the_least_recently_used() -> None:
    store = MemorySessionStore(max_sessions=2, clock=FakeClock())
    a, b = store.open(None), store.open(None)
    store.open(a.session_id)  # b is now the least recently used
    c = store.open(None)
    assert len(store) == 2
    assert store.open(a.session_id) is a and store.open(c.session_id) is c
    with pytest.raises(SessionNotFoundError):
        store.open(b.session_id)


# ------------------------------------------------------------------ owners


def test_a_session_opens_only_for_the_owner_that_started_it() -> None:
    store = MemorySessionStore(clock=FakeClock())
    mine = store.open(None, owner="platform")
    assert mine.owner == "platform"
    assert store.open(mine.session_id, owner="platform") is mine
    for stranger in ("other", None, "Platform", "platform "):
        with pytest.raises(SessionNotFoundError):
            store.open(mine.session_id, owner=stranger)
    ownerless = store.open(None)  # a service without keys: no owner, and no owner can take it over
    assert store.open(ownerless.session_id) is ownerless
    with pytest.raises(SessionNotFoundError):
        store.open(ownerless.session_id, owner="platform")


def test_another_owners_session_is_the_same_error_as_an_unknown_one() -> None:
    store = MemorySessionStore(clock=FakeClock())
    theirs = store.open(None, owner="a")
    with pytest.raises(SessionNotFoundError) as foreign:
        store.open(theirs.session_id, owner="b")
    with pytest.raises(SessionNotFoundError) as unknown:
        store.open("f" * 32, owner="b")
    assert str(foreign.value).replace(theirs.session_id, "ID") == str(unknown.value).replace("f" * 32, "ID")


def test_a_stranger_does_not_keep_a_session_alive() -> None:
    clock = FakeClock()
    store = MemorySessionStore(ttl_s=10.0, clock=clock)
    session = store.open(None, owner="a")
    for _ in range(3):
        clock.advance(4.0)
        with pytest.raises(SessionNotFoundError):
            store.open(session.session_id, owner="b")
    with pytest.raises(SessionNotFoundError):  # idle 12 s for its owner: expired
        store.open(session.session_id, owner="a")


def test_the_default_clock_is_the_real_one() -> None:
    store = MemorySessionStore()
    session = store.open(None)
    assert store.open(session.session_id) is session


class StoreModel:
    """What the store should hold, written as plainly as possible: id -> last use, oldest use first."""

    def __init__(self, max_sessions: int, ttl_s: float) -> None:
        self.max_sessions, self.ttl_s = max_sessions, ttl_s
        self.last_used: dict[str, float] = {}

    def _expire(self, now: float) -> None:
        self.last_used = {k: t for k, t in self.last_used.items() if now - t <= self.ttl_s}
        while len(self.last_used) > self.max_sessions:
            oldest = min(self.last_used, key=self.last_used.__getitem__)
            del self.last_used[oldest]

    def created(self, session_id: str, now: float) -> None:
        self._expire(now)
        self.last_used[session_id] = now
        self._expire(now)

    def opened(self, session_id: str, now: float) -> bool:
        self._expire(now)
        if session_id not in self.last_used:
            return False
        del self.last_used[session_id]  # re-inserted: dict order is use order, as ties need
        self.last_used[session_id] = now
        return True


@pytest.mark.parametrize("seed", range(5))
def test_the_store_matches_a_reference_model_over_random_use(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    store = MemorySessionStore(max_sessions=5, ttl_s=10.0, clock=clock)
    model = StoreModel(max_sessions=5, ttl_s=10.0)
    ids: list[str] = []
    for _ in range(400):
        action = rng.random()
        if action < 0.3:
            session = store.open(None)
            ids.append(session.session_id)
            model.created(session.session_id, clock())
        elif action < 0.8 and ids:
            session_id = rng.choice(ids)
            alive = model.opened(session_id, clock())
            if alive:
                assert store.open(session_id).session_id == session_id
            else:
                with pytest.raises(SessionNotFoundError):
                    store.open(session_id)
        else:
            clock.advance(rng.choice([0.0, 1.0, 2.5, 4.0, 10.0, 11.0]))
        assert len(store) == len(model.last_used) <= 5
