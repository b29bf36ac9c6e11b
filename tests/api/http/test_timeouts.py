"""Every outbound call has a deadline: a dependency that accepts connections and never answers (a black hole)
becomes a clean 502/503/504 with the API's error body, never a hang.

Each call runs under a generous guard (``asyncio.timeout``) so that a hang fails the test; no test
asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.api.conftest import API_KEY, BUCKET, start_live
from tests.support.net import BlackHole, black_hole

GUARD_S = 30.0


@dataclass
class Setup:
    url: str
    image: BlackHole
    s3: BlackHole
    llm: BlackHole


def _call(url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def main() -> httpx.Response:
        async with asyncio.timeout(GUARD_S):  # a hang fails here instead of stalling the suite
            async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": API_KEY}, timeout=None) as client:
                response = await client.request(method, path, **kwargs)
                await response.aread()
                return response

    return asyncio.run(main())


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


@pytest.fixture(scope="module")
def setup(settings_factory: Callable[..., Any], shared_encoders: None) -> Iterator[Setup]:
    """The API with every dependency a black hole but one good (simulated) LLM worker, and tight timeouts."""
    from api.http.app import create_app
    from api.worker.app import create_worker_app
    from llms.worker.service import WorkerService
    from llms.worker.simulated import SimulatedEngine

    good_server, good_thread, good_url = start_live(create_worker_app(WorkerService(SimulatedEngine(model_name="m"))))
    with black_hole() as image, black_hole() as s3, black_hole() as llm:
        settings = settings_factory(
            api={"deadline_s": 20.0},
            storage={
                "url_allow": ["127.0.0.1"],
                "connect_timeout_s": 0.5,
                "read_timeout_s": 0.5,
                "breaker_threshold": 100,  # every call reaches the black hole: the breaker is tested elsewhere
                "s3_endpoint_url": s3.url,
                "s3_access_key_id": "testing",
                "s3_secret_access_key": "testing",
                "s3_buckets": [BUCKET],
            },
            llm={
                "workers": [
                    {"url": f"{llm.url}/v1", "name": "hole", "models": ["m", "hole-only"]},
                    {"url": f"{good_url}/v1", "name": "good", "models": ["m"]},
                ],
                "dispatcher": {"policy": "round_robin", "first_token_timeout_s": 0.5, "health_interval_s": 60,
                               "breaker_threshold": 100},
            },
        )  # fmt: skip
        server, thread, url = start_live(create_app(settings))
        try:
            yield Setup(url, image, s3, llm)
        finally:
            server.should_exit = True
            thread.join(timeout=15)
    good_server.should_exit = True
    good_thread.join(timeout=15)


def test_image_url_black_hole_is_a_504_within_the_read_timeout(setup: Setup) -> None:
    r = _call(setup.url, "POST", "/v1/recommendations", json={"image_url": f"{setup.image.url}/photo.jpg"})
    error = _error(r, 504, "storage_timeout")
    assert "127.0.0.1" in error["message"]
    assert setup.image.accepted >= 1  # the image host was reached and stayed silent


def test_s3_black_hole_is_a_504(setup: Setup) -> None:
    r = _call(setup.url, "POST", "/v1/recommendations", json={"image_path": f"s3://{BUCKET}/2026/photo.jpg"})
    _error(r, 504, "storage_timeout")
    assert setup.s3.accepted >= 1


def test_a_black_hole_llm_worker_is_failed_over_when_streaming(setup: Setup) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "navy blazers"}], "stream": True,
            "max_tokens": 4}  # fmt: skip
    before = setup.llm.accepted
    # Round robin over the two workers: among four requests some go to the black hole first.
    for _ in range(4):
        r = _call(setup.url, "POST", "/v1/llm/chat/completions", json=body)
        assert r.status_code == 200, r.text
        events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
        assert text.startswith("[simulated m]"), text
    assert setup.llm.accepted > before


def test_a_model_only_a_black_hole_serves_is_a_clean_504(setup: Setup) -> None:
    body = {"model": "hole-only", "messages": [{"role": "user", "content": "hi"}]}
    r = _call(setup.url, "POST", "/v1/llm/chat/completions", json=body, headers={"X-Tandem-Deadline-S": "1"})
    _error(r, 504, "deadline_exceeded")


def test_qdrant_black_hole_is_a_store_error_and_a_503() -> None:
    from api.http.errors import to_api_error
    from retrieval.client_store import ClientStore
    from retrieval.errors import StoreError

    async def connect(url: str) -> BaseException:
        async with asyncio.timeout(GUARD_S):
            try:
                await asyncio.to_thread(ClientStore.connect, url, "products", timeout_s=1, check_compatibility=False)
            except StoreError as exc:
                return exc
        raise AssertionError("a Qdrant black hole was taken for a server")

    with black_hole() as qdrant:
        error = asyncio.run(connect(qdrant.url))
        assert qdrant.accepted >= 1
    assert "cannot reach Qdrant" in str(error)
    assert (to_api_error(error).status, to_api_error(error).code) == (503, "backend_unavailable")
