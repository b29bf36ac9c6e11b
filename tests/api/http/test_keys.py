"""API keys and fairness: token buckets, keys that rotate from a file, sessions per key, no key in any log.

Time is a :class:`FakeClock` everywhere: a bucket refills, and a keys file is looked at again,
only when the test moves the clock. The app tests swap the app's key ring and rate limiter
(``app.state.keys``, ``app.state.rate_limiter``) for ones on a fake clock before they call it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.http import keys as keys_module
from api.http.keys import KeyRing, caller_id, parse_keys
from api.http.rate_limit import RateLimiter, TokenBucket
from api.settings import ApiSettings
from tests.support.clock import FakeClock

KEY_A = "alpha-Secret-0123456789"
KEY_B = "bravo-Secret-9876543210"
WRONG = "wrong-Secret-5555555555"
URL = "/v1/recommendations"


# ------------------------------------------------------------------ the token bucket


def test_a_bucket_allows_its_burst_then_refuses_with_the_wait() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token comes back after 1/rate
    assert bucket.take(0.25) == pytest.approx(0.25)  # a refusal takes nothing: the wait only shrinks
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_a_bucket_refills_at_its_rate_and_never_above_its_burst() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=5, now=0.0)
    for _ in range(5):
        bucket.take(0.0)
    allowed = sum(bucket.take(1.0) == 0.0 for _ in range(20))
    assert allowed == 5  # 10 tokens refilled in 1 s, capped at the burst of 5
    allowed = sum(bucket.take(1.3) == 0.0 for _ in range(20))
    assert allowed == 3  # 0.3 s later: 3 tokens


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_bucket_needs_a_positive_rate_and_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(rate, burst, now=0.0)
    with pytest.raises(ValueError, match="positive rate"):
        RateLimiter(rate, burst)


def test_a_limiter_gives_each_caller_its_own_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1.0, burst=2, clock=clock)
    assert [limiter.check("a") for _ in range(3)] == [0.0, 0.0, 1.0]
    assert [limiter.check("b") for _ in range(2)] == [0.0, 0.0]  # a's flood did not touch b
    clock.advance(1.0)
    assert limiter.check("a") == 0.0 and limiter.check("a") == pytest.approx(1.0)


def test_a_limiters_refusals_are_handed_out_for_logging_at_most_every_log_every_s() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=clock, log_every_s=10.0)
    limiter.check("a")
    assert limiter.refusals_to_log("a") == 0  # nothing refused yet
    limiter.check("a")
    assert limiter.refusals_to_log("a") == 1  # the first refusal at once
    for _ in range(50):
        limiter.check("a")
        assert limiter.refusals_to_log("a") == 0  # then nothing for 10 s...
    clock.advance(9.9)
    assert limiter.refusals_to_log("a") == 0
    clock.advance(0.1)
    assert limiter.refusals_to_log("a") == 50  # ...then all of them on one line
    assert limiter.refusals_to_log("a") == 0 and limiter.refusals_to_log("unknown") == 0


class RecordingSleep:
    """An ``asyncio.sleep`` stand-in that records what was asked and waits until released."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.release = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self.release.wait()


def test_refused_requests_are_held_up_to_their_retry_after_and_at_most_max_held_at_once() -> None:
    async def scenario() -> tuple[list[bool], list[float], list[bool]]:
        sleep = RecordingSleep()
        limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=FakeClock(), hold_s=1.0, max_held=2, sleep=sleep,
                              hold_jitter=0.0)  # fmt: skip
        limiter.check("a")
        waits = [limiter.check("a") for _ in range(3)]
        held = [asyncio.create_task(limiter.hold("a", max(1, math.ceil(w)))) for w in waits[:2]]
        await asyncio.sleep(0)
        over = await limiter.hold("a", 1)  # a third while two wait: answered at once
        short = RateLimiter(rate_per_s=1.0, burst=1, clock=FakeClock(), hold_s=5.0, sleep=sleep, hold_jitter=0.0)
        short.check("b")
        short.check("b")
        sleep.release.set()
        done = await asyncio.gather(*held, short.hold("b", 2))
        return [*done, over], sleep.asked, [await RateLimiter(1.0, 1).hold("c", 1)]

    done, asked, off = asyncio.run(scenario())
    assert done == [True, True, True, False]
    assert asked == [1.0, 1.0, 2.0]  # hold_s, capped by the Retry-After
    assert off == [False]  # holds are off unless asked for


def test_holds_are_jittered_so_a_flood_refused_together_does_not_come_back_together() -> None:
    async def scenario(jitter: float) -> list[float]:
        sleep = RecordingSleep()
        sleep.release.set()
        limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=FakeClock(), hold_s=1.0, max_held=64, sleep=sleep,
                              hold_jitter=jitter, rng=random.Random(7))  # fmt: skip
        limiter.check("a")
        for _ in range(50):  # one flood: 50 connections refused at the same instant
            limiter.check("a")
            await limiter.hold("a", 1.0)
        return sleep.asked

    spread = asyncio.run(scenario(0.5))
    assert all(0.5 <= s <= 1.0 for s in spread)  # never longer than the Retry-After, never under half the hold
    # Spread over the window: the retries come back over half a second, not at one instant.
    assert max(spread) - min(spread) > 0.4 and len(set(spread)) == len(spread)
    assert asyncio.run(scenario(0.0)) == [1.0] * 50  # without jitter: all together, the burst this prevents
    with pytest.raises(ValueError, match="hold_jitter"):
        RateLimiter(1.0, 1, hold_jitter=1.5)


def test_a_limiter_holds_a_bounded_number_of_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=clock, max_callers=2)
    limiter.check("a")
    limiter.check("b")
    limiter.check("a")  # refused, and now the most recently used
    limiter.check("c")  # evicts b, the idlest
    assert len(limiter) == 2
    assert limiter.check("a") > 0  # a kept its empty bucket
    assert limiter.check("b") == 0.0  # b's was dropped: it starts again with a full one
    assert len(limiter) == 2


@pytest.mark.parametrize(("rate", "on"), [(None, False), (0.0, False), (5.0, True)])
def test_the_limiter_is_off_without_a_rate(rate: float | None, on: bool) -> None:
    limiter = RateLimiter.from_settings(ApiSettings(rate_per_s=rate, burst=7, rate_limit_hold_s=0.5))
    assert (limiter is not None) == on
    if limiter is not None:
        assert (limiter.rate_per_s, limiter.burst, limiter.hold_s) == (5.0, 7, 0.5)


def test_the_default_limit_is_generous() -> None:
    api = ApiSettings()
    assert api.rate_per_s is not None and api.rate_per_s >= 50 and api.burst >= 2 * api.rate_per_s


# ------------------------------------------------------------------ keys


def test_key_lines_may_be_named_and_commented() -> None:
    lines = ["# rotated 2026-01", "", "platform:abc", "  spaced : def  ", "plain", "a b:c", "x:"]
    assert parse_keys(lines) == [
        ("platform", "abc"),
        ("spaced", "def"),
        (caller_id("plain"), "plain"),
        (caller_id("a b:c"), "a b:c"),  # not a plain name before the colon: the whole line is the key
        (caller_id("x:"), "x:"),
    ]


def test_an_unnamed_keys_id_is_short_stable_and_not_the_key() -> None:
    ident = caller_id(KEY_A)
    assert ident == caller_id(KEY_A) != caller_id(KEY_B)
    assert ident.startswith("key-") and len(ident) == 16
    assert KEY_A not in ident and not any(part in ident for part in KEY_A.split("-"))


def test_a_ring_knows_each_keys_caller_and_no_other_key() -> None:
    ring = KeyRing([f"a:{KEY_A}", KEY_B])
    assert ring.configured
    assert ring.identify(KEY_A) == "a"
    assert ring.identify(KEY_B) == caller_id(KEY_B)
    for bad in (WRONG, "", None, KEY_A[:-1], KEY_A + "x", f"a:{KEY_A}", "a"):
        assert ring.identify(bad) is None
    assert not KeyRing().configured and KeyRing().identify(KEY_A) is None


def test_every_key_is_compared_in_constant_time_on_equal_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real = keys_module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    ring = KeyRing([f"a:{KEY_A}", "b:short", f"c:{KEY_B * 3}"])
    monkeypatch.setattr(keys_module.hmac, "compare_digest", counting)
    for given in (KEY_A, "short", WRONG, "x"):  # the first key, a middle one, none
        calls.clear()
        ring.identify(given)
        assert len(calls) == 3, given  # no early exit on a match
        assert {n for pair in calls for n in pair} == {32}  # digests: lengths say nothing about the keys


def _write(path: Path, text: str, mtime_s: int) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))  # explicit: coarse file-system clocks cannot hide a change


def test_keys_from_a_file_rotate_when_it_changes_checked_at_most_every_reload_s(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    _write(path, f"# keys\nplatform:{KEY_A}\n", 1000)
    clock = FakeClock()
    ring = KeyRing([f"env:{KEY_B}"], keys_file=path, reload_s=5.0, clock=clock)
    assert ring.identify(KEY_A) == "platform" and ring.identify(KEY_B) == "env"

    _write(path, f"platform:{KEY_A}\nplatform:{WRONG}\n", 1001)  # the new key beside the old one
    clock.advance(4.9)
    assert ring.identify(WRONG) is None  # not looked at again yet
    clock.advance(0.1)
    assert ring.identify(WRONG) == "platform" and ring.identify(KEY_A) == "platform"

    _write(path, f"platform:{WRONG}\n", 1002)  # the old key removed
    clock.advance(5.0)
    assert ring.identify(KEY_A) is None and ring.identify(WRONG) == "platform"
    assert ring.identify(KEY_B) == "env"  # keys from the settings stay
    assert ring.callers == ["env", "platform"]


def test_a_removed_keys_file_revokes_its_keys_and_still_needs_a_key(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    _write(path, f"{KEY_A}\n", 1000)
    clock = FakeClock()
    ring = KeyRing(keys_file=path, reload_s=1.0, clock=clock)
    assert ring.identify(KEY_A) == caller_id(KEY_A)
    path.unlink()
    clock.advance(1.0)
    assert ring.identify(KEY_A) is None
    assert ring.configured  # an empty or missing file refuses everyone; it does not open the service
    _write(path, f"{KEY_A}\n", 1001)
    clock.advance(1.0)
    assert ring.identify(KEY_A) == caller_id(KEY_A)


def test_a_keys_file_that_is_missing_at_start_is_no_keys(tmp_path: Path) -> None:
    ring = KeyRing(keys_file=tmp_path / "absent", clock=FakeClock())
    assert ring.configured and ring.identify(KEY_A) is None


def test_settings_read_the_new_keys_fields(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from api.settings import Settings

    monkeypatch.setenv("TANDEM_API__KEYS_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("TANDEM_API__KEYS_RELOAD_S", "2.5")
    monkeypatch.setenv("TANDEM_API__RATE_PER_S", "0")
    monkeypatch.setenv("TANDEM_API__BURST", "9")
    api = Settings(_env_file=None).api  # type: ignore[call-arg]
    assert (api.keys_file, api.keys_reload_s, api.rate_per_s, api.burst) == (tmp_path / "keys", 2.5, 0.0, 9)
    assert api.keyed and not api.keys
    assert not ApiSettings().keyed and ApiSettings(keys=["k"]).keyed  # type: ignore[list-item]


# ------------------------------------------------------------------ through the app


@pytest.fixture(scope="module")
def keyed(settings_factory: Any, shared_encoders: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The service with keys a and b (env) and a keys file, and an LLM worker that is not there (chat degrades)."""
    from fastapi.testclient import TestClient

    from api.http.app import create_app

    keys_file = tmp_path_factory.mktemp("keys") / "keys"
    keys_file.write_text("file:from-the-file-key-000\n", encoding="utf-8")
    settings = settings_factory(
        api={"keys": [f"a:{KEY_A}", f"b:{KEY_B}"], "keys_file": keys_file},
        llm={"workers": [{"url": "http://127.0.0.1:9/v1", "name": "absent"}]},
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def clock(keyed: Any) -> Iterator[FakeClock]:
    """A fake clock for the app's key ring and a tight rate limit (1 request/s, bursts of 2), fresh per test."""
    fake = FakeClock()
    state = keyed.app.state
    saved = state.keys, state.rate_limiter  # set back by hand: monkeypatch cannot restore a starlette State
    _write(saved[0].keys_file, "file:from-the-file-key-000\n", 1000)  # as the fixture wrote it
    state.keys = KeyRing([f"a:{KEY_A}", f"b:{KEY_B}"], keys_file=saved[0].keys_file, reload_s=5.0, clock=fake)
    state.rate_limiter = RateLimiter(rate_per_s=1.0, burst=2, clock=fake)
    yield fake
    state.keys, state.rate_limiter = saved


def _post(client: Any, key: str | None, body: dict[str, Any] | None = None) -> Any:
    headers = {"X-API-Key": key} if key is not None else {}
    return client.post(URL, json=body or {"text": "belt", "top_k": 2}, headers=headers)


def _error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code and err["message"] and err["request_id"] == r.headers["x-request-id"]
    return err


def test_over_its_rate_a_key_gets_429_with_retry_after_and_others_are_served(keyed: Any, clock: FakeClock) -> None:
    assert [_post(keyed, KEY_A).status_code for _ in range(2)] == [200, 200]
    r = _post(keyed, KEY_A)
    err = _error(r, 429, "rate_limited")
    assert r.headers["retry-after"] == "1"
    assert "rate limit" in err["message"] and "(a)" in err["message"]
    assert [_post(keyed, KEY_B).status_code for _ in range(2)] == [200, 200]  # b's bucket is its own
    clock.advance(1.0)
    assert _post(keyed, KEY_A).status_code == 200
    assert _post(keyed, KEY_A).status_code == 429
    metrics = keyed.get("/metrics").text
    assert 'tandem_http_rejected_total{reason="rate_limited"}' in metrics


def test_a_flood_writes_one_log_line_not_one_a_request(
    keyed: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tandem.api.access"):
        statuses = [_post(keyed, KEY_A).status_code for _ in range(12)]
    assert statuses == [200, 200] + [429] * 10
    lines = [(r.getMessage(), getattr(r, "refused", None)) for r in caplog.records if r.name == "tandem.api.access"]
    assert lines == [("request", None), ("request", None), ("rate limited", 1)]


def test_the_app_holds_a_refused_request_before_its_429(keyed: Any, clock: FakeClock) -> None:
    sleep = RecordingSleep()
    sleep.release.set()  # the hold returns at once; the test sees that it was asked for
    keyed.app.state.rate_limiter = RateLimiter(rate_per_s=0.4, burst=1, clock=clock, hold_s=1.0, sleep=sleep,
                                               hold_jitter=0.0)  # fmt: skip
    assert _post(keyed, KEY_A).status_code == 200 and sleep.asked == []
    r = _post(keyed, KEY_A)
    assert (r.status_code, r.headers["retry-after"]) == (429, "3")
    assert sleep.asked == [1.0]  # hold_s, under the Retry-After
    _error(_post(keyed, WRONG), 401, "unauthorized")
    assert sleep.asked == [1.0]  # only a known key's refusals are held


def test_retry_after_is_whole_seconds_rounded_up(keyed: Any, clock: FakeClock) -> None:
    keyed.app.state.rate_limiter = RateLimiter(rate_per_s=0.4, burst=1, clock=clock)  # the clock fixture restores it
    assert _post(keyed, KEY_A).status_code == 200
    assert _post(keyed, KEY_A).headers["retry-after"] == "3"  # 2.5 s to the next token
    clock.advance(2.0)
    assert _post(keyed, KEY_A).headers["retry-after"] == "1"  # 0.5 s


def test_wrong_and_missing_keys_are_401_and_spend_no_ones_tokens(keyed: Any, clock: FakeClock) -> None:
    for _ in range(5):
        _error(_post(keyed, WRONG), 401, "unauthorized")
        _error(_post(keyed, None), 401, "unauthorized")
        _error(_post(keyed, ""), 401, "unauthorized")
    assert [_post(keyed, KEY_A).status_code for _ in range(3)] == [200, 200, 429]


def test_without_a_rate_limit_nothing_is_throttled(keyed: Any, clock: FakeClock) -> None:
    keyed.app.state.rate_limiter = None  # the clock fixture restores it
    assert {_post(keyed, KEY_A).status_code for _ in range(6)} == {200}


def test_the_app_reads_the_keys_file_and_rotates_without_a_restart(keyed: Any, clock: FakeClock) -> None:
    path = keyed.app.state.keys.keys_file
    assert _post(keyed, "from-the-file-key-000").status_code == 200  # read from the settings' file at start
    _write(path, f"file:from-the-file-key-000\nfile:{WRONG}\n", 2000)
    clock.advance(5.0)
    assert _post(keyed, WRONG).status_code == 200  # added
    _write(path, f"file:{WRONG}\n", 2001)
    clock.advance(5.0)
    _error(_post(keyed, "from-the-file-key-000"), 401, "unauthorized")  # removed
    assert _post(keyed, WRONG).status_code == 200
    assert _post(keyed, KEY_A).status_code == 200  # the settings' keys are untouched


def _chat(client: Any, key: str, session_id: str | None = None, *, stream: bool = False) -> Any:
    body: dict[str, Any] = {"message": {"text": "red kurtas"}, "top_k": 2, "stream": stream}
    if session_id is not None:
        body["session_id"] = session_id
    return client.post("/v1/chat", json=body, headers={"X-API-Key": key})


def test_a_chat_session_belongs_to_the_key_that_opened_it(keyed: Any, clock: FakeClock) -> None:
    opened = _chat(keyed, KEY_A)
    assert opened.status_code == 200, opened.text
    session_id = opened.json()["session_id"]
    clock.advance(10.0)  # fresh tokens for every call below
    follow = _chat(keyed, KEY_A, session_id)
    assert follow.status_code == 200 and follow.json()["session_id"] == session_id
    stolen = _error(_chat(keyed, KEY_B, session_id), 404, "session_not_found")
    unknown = _error(_chat(keyed, KEY_B, "0" * 32), 404, "session_not_found")
    assert stolen["message"].replace(session_id, "ID") == unknown["message"].replace("0" * 32, "ID")
    clock.advance(10.0)
    _error(_chat(keyed, KEY_B, session_id, stream=True), 404, "session_not_found")
    assert _chat(keyed, KEY_A, session_id, stream=True).status_code == 200  # still a's


def test_no_key_material_in_logs_or_error_bodies(
    keyed: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    secrets_seen = (KEY_A, WRONG, "from-the-file-key-000")
    bodies = []
    with caplog.at_level(logging.DEBUG):
        bodies.append(_post(keyed, KEY_A).text)
        bodies.append(_post(keyed, WRONG).text)
        bodies.append(_post(keyed, WRONG, {"text": "belt", "colour": "x"}).text)  # 401 or 422: either way no key
        bodies += [_post(keyed, KEY_A).text for _ in range(2)]  # the second is a 429
        clock.advance(5.0)
        bodies.append(_post(keyed, "from-the-file-key-000").text)
    assert any('"rate_limited"' in b for b in bodies) and any('"unauthorized"' in b for b in bodies)
    access = [r for r in caplog.records if r.name == "tandem.api.access"]
    # ids, never keys; the refused request has no line of its own but a "rate limited" one
    assert [(r.getMessage(), getattr(r, "caller", "?")) for r in access] == [
        ("request", "a"), ("request", None), ("request", None), ("request", "a"), ("rate limited", "a"),
        ("request", "file"),
    ]  # fmt: skip
    for record in caplog.records:
        text = record.getMessage() + " " + " ".join(repr(v) for v in vars(record).values())
        for secret in secrets_seen:
            assert secret not in text, (record.name, record.getMessage())
    for body in bodies:
        for secret in secrets_seen:
            assert secret not in body
