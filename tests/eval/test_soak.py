"""The soak's parts: the request mix and its expected answers, the per-minute
figures and the memory growth against hand-worked records, and the process monitor on a real child process."""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Any

import pytest

from eval.soak.monitor import ProcessMonitor, sample_tree
from eval.soak.report import per_minute, summarise
from eval.soak.run import mix_capacity, only
from eval.soak.traffic import KINDS, Planned, TrafficMix, expected_status


def test_the_mix_draws_every_kind_in_proportion() -> None:
    mix = TrafficMix("http://img", ["1", "2"], ["navy shirt"])
    rng = random.Random(0)
    drawn = [mix.draw(rng) for _ in range(4000)]
    share = {k: sum(p.name == k for p in drawn) / len(drawn) for k in KINDS}
    for kind, weight in mix.weights:
        assert share[kind] == pytest.approx(weight, abs=0.03), kind
    photo = next(p for p in drawn if p.name == "photo")
    assert photo.body is not None and photo.body["image_url"] in ("http://img/1.jpg", "http://img/2.jpg")
    assert all(p.stream == (p.name == "chat_stream") for p in drawn)


def test_expected_status_needs_an_answer_and_the_right_one() -> None:
    ok = Planned("photo", "/v1/recommendations", {})
    assert expected_status(ok, 200)
    assert not expected_status(ok, 500)
    assert not expected_status(ok, None)
    schema = Planned("bad", "/v1/recommendations", {}, expect=422)
    assert expected_status(schema, 422) and expected_status(schema, 400) and not expected_status(schema, 200)


def _record(t: float, kind: str, ms: float | None, expected: bool = True) -> dict[str, Any]:
    return {"t_s": t, "kind": kind, "latency_ms": ms, "status": 200 if expected else 500, "expected": expected,
            "label": "", "error": None}  # fmt: skip


def test_per_minute_percentiles_and_unexpected_counts() -> None:
    records = [_record(1.0 + i, "photo", float(10 * (i + 1))) for i in range(10)]  # minute 1: 10..100 ms
    records += [_record(61.0, "photo", 500.0), _record(62.0, "photo", None, expected=False), _record(63.0, "chat", 9.0)]
    rows = per_minute(records, ("photo", "text"))
    assert [r["minute"] for r in rows] == [1, 2]
    assert rows[0]["requests"] == 10 and rows[0]["unexpected"] == 0
    assert rows[0]["p50_ms"] == pytest.approx(55.0)  # NumPy's linear interpolation over 10..100
    assert rows[0]["p95_ms"] == pytest.approx(95.5)
    assert rows[1] == {"minute": 2, "requests": 2, "p50_ms": 500.0, "p95_ms": 500.0, "p99_ms": 500.0, "unexpected": 1}


def test_summary_memory_growth_is_measured_from_the_second_minute() -> None:
    samples = [{"t_s": t, "rss_mb": {"api": 100.0 + (10.0 if t >= 240 else 0.0), "llm worker": 100.0,
                                     "image server": 999.0}, "fds": {"api": 20}}  # the image server is not ours
               for t in range(0, 300, 5)]  # fmt: skip
    results = {"config": {"minutes": 5.0, "load": 0.5}, "capacity_rps": 4.0, "rate_rps": 2.0,
               "records": [_record(70.0, "photo", 50.0), _record(250.0, "photo", 60.0, expected=False)],
               "samples": samples}  # fmt: skip
    s = summarise(results)
    assert s["rss_after_warmup_mb"] == pytest.approx(200.0)
    assert s["rss_last_minute_mb"] == pytest.approx(210.0)
    assert s["rss_growth"] == pytest.approx(0.05)
    assert s["unexpected"] == 1 and s["errors"] == 1


def test_the_monitor_sees_a_child_process_memory_and_descriptors() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 * 2**20); time.sleep(30)"])
    try:
        with ProcessMonitor({child.pid: "api"}, every_s=0.05) as monitor:
            while not monitor.samples or monitor.samples[-1].rss_mb.get("api", 0) < 64:
                if child.poll() is not None:
                    pytest.fail("the child died")
        last = sample_tree({child.pid: "api"}, 0.0)
        assert last.rss_mb["api"] >= 64  # the 64 MB it holds
        assert last.fds["api"] >= 3  # stdin, stdout, stderr at least
    finally:
        child.kill()
        child.wait()


def test_mix_capacity_is_the_rate_at_which_one_shared_server_is_just_busy() -> None:
    # Oracle: one server that spends 50 ms on a REST request and 5 s on a chat turn is busy all the time at
    # 1 / Σ share × seconds requests a second; each group's own capacity is 1 / its seconds.
    weights = {"photo": 0.5, "text": 0.2, "bad": 0.1, "chat": 0.1, "chat_stream": 0.1}
    seconds = {"rest": 0.05, "chat": 5.0}
    busy_at = 1.0 / (0.8 * seconds["rest"] + 0.2 * seconds["chat"])
    capacity = mix_capacity(weights, {g: 1.0 / s for g, s in seconds.items()})
    assert capacity == pytest.approx(busy_at)
    # Half of it keeps the chat kinds at half of what chat can take (the old whole-mix loop did not).
    chat_rate = 0.5 * capacity * 0.2
    assert chat_rate * seconds["chat"] < 0.5


def test_mix_capacity_without_chat_is_the_rest_capacity_and_a_silent_group_is_an_error() -> None:
    assert mix_capacity({"photo": 1.0, "text": 1.0}, {"rest": 12.0}) == pytest.approx(12.0)
    with pytest.raises(ValueError, match="no chat request"):
        mix_capacity({"photo": 0.5, "chat": 0.5}, {"rest": 12.0, "chat": 0.0})


def test_a_mix_restricted_to_some_kinds_draws_only_those() -> None:
    mix = only(TrafficMix("http://img", ["1"], ["navy shirt"]), ("chat", "chat_stream"))
    rng = random.Random(1)
    assert {mix.draw(rng).name for _ in range(200)} == {"chat", "chat_stream"}
