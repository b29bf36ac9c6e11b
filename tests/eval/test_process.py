"""eval.process.wait_llm_ready: returns once /readyz reports the LLM up, fails fast when the API has died."""

from __future__ import annotations

import httpx
import pytest

from eval.process import ServiceError, wait_llm_ready


def _client(answers: list[dict[str, object]]) -> tuple[httpx.Client, list[int]]:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, json=answers[min(len(calls), len(answers)) - 1])

    return httpx.Client(base_url="http://api", transport=httpx.MockTransport(handler)), calls


def test_waits_until_the_llm_part_is_up() -> None:
    client, calls = _client([{"parts": {"llm": False}}, {"parts": {"llm": False}}, {"parts": {"llm": True}}])
    wait_llm_ready(client, 30, poll_s=0)
    assert len(calls) == 3


def test_a_dead_api_fails_at_once_and_a_slow_one_times_out() -> None:
    client, calls = _client([{"parts": {"llm": False}}])
    with pytest.raises(ServiceError, match="stopped before its LLM worker"):
        wait_llm_ready(client, 30, alive=lambda: False, poll_s=0)
    assert len(calls) == 1
    with pytest.raises(ServiceError, match="not up within"):
        wait_llm_ready(client, 0, poll_s=0)
