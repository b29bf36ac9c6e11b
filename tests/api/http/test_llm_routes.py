"""The API's LLM face: the OpenAI-compatible gateway through the dispatcher, the worker pool, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import API_KEY, LiveServer, start_live
from tests.support.scripted import Behaviour, ScriptedTransport

HEADERS = {"X-API-Key": API_KEY}
BODY = {"model": "m", "messages": [{"role": "user", "content": "navy blazers"}]}


@pytest.fixture(scope="module")
def llm_live(
    settings_factory: Callable[..., Any], shared_encoders: None
) -> Iterator[tuple[LiveServer, dict[str, Behaviour]]]:
    """A live API whose dispatcher talks to two scripted workers; one slot each, a queue of one."""
    from api.http.app import create_app

    behaviours = {"w1": Behaviour(delay_s=0.4), "w2": Behaviour(delay_s=0.4, models=("m", "slow"))}
    settings = settings_factory(
        llm={
            "workers": [
                {"url": "http://w1/v1", "name": "w1", "models": ["m"], "max_concurrency": 1},
                {"url": "http://w2/v1", "name": "w2", "models": ["m", "slow"], "max_concurrency": 1},
            ],
            "dispatcher": {"max_queue": 1, "health_interval_s": 30, "stream_idle_timeout_s": 5},
        }
    )
    app = create_app(settings, llm_transport=ScriptedTransport(behaviours))
    server, thread, url = start_live(app)
    yield LiveServer(url, app), behaviours
    server.should_exit = True
    thread.join(timeout=15)


def test_gateway_answers_through_the_dispatcher(llm_live: tuple[LiveServer, dict[str, Behaviour]]) -> None:
    live, _ = llm_live
    r = httpx.post(f"{live.url}/v1/llm/chat/completions", json=BODY, headers=HEADERS, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].startswith("from w")
    assert r.headers["X-Tandem-Worker"] in {"w1", "w2"}


def test_full_queue_is_429_with_retry_after_and_admitted_requests_finish(
    llm_live: tuple[LiveServer, dict[str, Behaviour]],
) -> None:
    live, _ = llm_live

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live.url, headers=HEADERS, timeout=10) as client:
            admitted = [asyncio.create_task(client.post("/v1/llm/chat/completions", json=BODY)) for _ in range(3)]
            await asyncio.sleep(0.15)  # two in flight (one per worker), one queued
            refused = await client.post("/v1/llm/chat/completions", json=BODY)
            return [refused, *await asyncio.gather(*admitted)]

    refused, *admitted = asyncio.run(main())
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "overloaded"
    assert [r.status_code for r in admitted] == [200, 200, 200]


def test_batch_priority_header_and_validation(llm_live: tuple[LiveServer, dict[str, Behaviour]]) -> None:
    live, _ = llm_live
    r = httpx.post(
        f"{live.url}/v1/llm/chat/completions", json=BODY, headers={**HEADERS, "X-Tandem-Priority": "bulk"}, timeout=10
    )
    assert r.status_code == 422
    r = httpx.post(f"{live.url}/v1/llm/chat/completions", json={"model": "m", "messages": []}, headers=HEADERS)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_request"
    r = httpx.post(f"{live.url}/v1/llm/chat/completions", json={**BODY, "model": "gpt-9"}, headers=HEADERS)
    assert r.status_code == 404
    assert "served:" in r.json()["error"]["message"]
    r = httpx.post(f"{live.url}/v1/llm/chat/completions", json=BODY)
    assert r.status_code == 401


def test_stream_is_sse_and_a_break_ends_with_an_error_event(
    llm_live: tuple[LiveServer, dict[str, Behaviour]],
) -> None:
    live, behaviours = llm_live
    with httpx.stream(
        "POST", f"{live.url}/v1/llm/chat/completions", json={**BODY, "stream": True}, headers=HEADERS, timeout=10
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    texts = [json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in lines[:-1]]
    assert "".join(texts).endswith(":first second")
    behaviours["w2"].mode = "break_after_first"
    try:
        with httpx.stream(
            "POST",
            f"{live.url}/v1/llm/chat/completions",
            json={**BODY, "model": "slow", "stream": True},
            headers=HEADERS,
            timeout=10,
        ) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    finally:
        behaviours["w2"].mode = "ok"
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] == "llm_error"
    assert "broke" in error["message"]
    assert error["request_id"]


def test_workers_can_be_listed_added_and_removed(llm_live: tuple[LiveServer, dict[str, Behaviour]]) -> None:
    live, _ = llm_live
    url = f"{live.url}/v1/llm/workers"
    names = [w["name"] for w in httpx.get(url, headers=HEADERS).json()]
    assert names == ["w1", "w2"]
    added = httpx.post(url, json={"url": "http://w3:9000/v1", "name": "w3", "models": ["m"]}, headers=HEADERS)
    assert added.status_code == 201
    assert added.json()["healthy"] is True
    assert httpx.post(url, json={"url": "ftp://x"}, headers=HEADERS).status_code == 422
    assert httpx.delete(f"{url}/w3", headers=HEADERS).status_code == 204
    assert httpx.delete(f"{url}/w3", headers=HEADERS).status_code == 404
    assert [w["name"] for w in httpx.get(url, headers=HEADERS).json()] == ["w1", "w2"]


def test_metrics_include_the_llm_dispatcher(llm_live: tuple[LiveServer, dict[str, Behaviour]]) -> None:
    live, _ = llm_live
    text = httpx.get(f"{live.url}/metrics", headers=HEADERS).text
    assert 'tandem_llm_worker_in_flight{worker="w1"}' in text
    assert "tandem_llm_rejected_total" in text
