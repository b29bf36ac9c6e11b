"""Stateless API replicas: two ``tandem serve`` processes share one Redis, and a conversation moves between them.

Each replica serves its own copy of the index (a Qdrant Edge shard opens in one process only)
and no LLM worker, so a turn is retrieval, the session's terms and what it already showed:
deterministic, hence an oracle. Turn 2 on replica B after turn 1 on replica A must answer exactly
what turn 2 answers when both turns run on replica A, and differ from turn 2 without turn 1.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from eval.process import Service, free_port, wait_http
from tests.api.conftest import API_KEY
from tests.support.processes import tandem_command, tandem_env
from tests.support.redis import RedisServer, redis_fixture  # noqa: F401 - provides the redis_server fixture

ALICE, BOB = {"X-API-Key": "key-alice"}, {"X-API-Key": "key-bob"}
TURN_1 = {"message": {"text": "casual shirts"}, "top_k": 4}
TURN_2 = {"message": {"text": "in white"}, "top_k": 4}


@dataclass(frozen=True)
class Replica:
    name: str
    url: str

    def chat(self, body: dict[str, Any], headers: dict[str, str], session_id: str | None = None) -> httpx.Response:
        if session_id is not None:
            body = {**body, "session_id": session_id}
        return httpx.post(f"{self.url}/v1/chat", json=body, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def replicas(
    api_home: Path,
    small_catalogue_dir: Path,
    tiny_tower_dir: Path,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Replica, Replica]]:
    root = tmp_path_factory.mktemp("replicas")
    services: list[Service] = []
    out: list[Replica] = []
    try:
        for name in ("a", "b"):
            home = root / name
            shutil.copytree(api_home, home)  # its own copy of the index
            env = tandem_env(
                home, image_checkpoint=tiny_tower_dir, CATALOGUE__PATH=str(small_catalogue_dir),
                API__KEYS="alice:key-alice,bob:key-bob", SESSIONS__URL=redis_server.url,
                SESSIONS__KEY_PREFIX=f"replicas-{root.name}:",
            )  # fmt: skip
            port = free_port()
            command = tandem_command("serve", "--port", str(port), "--no-embedded-llm")
            services.append(Service(f"replica {name}", command, root / f"{name}.log", env=env))
            out.append(Replica(name, f"http://127.0.0.1:{port}"))
        for service, replica in zip(services, out, strict=True):  # both start at once; wait for each
            wait_http(f"{replica.url}/readyz", service, timeout_s=300)
        yield out[0], out[1]
    finally:
        for service in services:
            service.stop()


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["product_id"] for item in response.json()["items"]]


def test_both_replicas_report_the_shared_session_store(replicas: tuple[Replica, Replica]) -> None:
    for replica in replicas:
        ready = httpx.get(f"{replica.url}/readyz", timeout=30).json()
        assert ready["ready"] is True and ready["parts"]["sessions"] is True
        assert ready["detail"]["sessions"] == "redis"


def test_a_conversation_started_on_one_replica_continues_on_the_other(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    # The oracle: both turns on one replica.
    alone_1 = a.chat(TURN_1, ALICE)
    alone_2 = a.chat(TURN_2, ALICE, alone_1.json()["session_id"])
    # The same conversation, turn 2 on the other replica.
    first = a.chat(TURN_1, ALICE)
    sid = first.json()["session_id"]
    second = b.chat(TURN_2, ALICE, sid)
    assert ids(first) == ids(alone_1)
    assert second.json()["session_id"] == sid
    assert second.json()["query"] == alone_2.json()["query"] == "white shirts casual"  # turn 1's terms, refined
    assert ids(second) == ids(alone_2)
    assert set(ids(first)).isdisjoint(ids(second))  # what turn 1 showed is not shown again
    # Turn 2 without turn 1 is another answer: the session is what made the difference.
    fresh = b.chat(TURN_2, ALICE)
    assert fresh.json()["query"] == "white" and ids(fresh) != ids(second)
    # Back on replica A, turn 3 (turn 2 again) skips what replica B showed in turn 2, as on one replica.
    alone_3 = a.chat(TURN_2, ALICE, alone_1.json()["session_id"])
    third = a.chat(TURN_2, ALICE, sid)
    assert ids(third) == ids(alone_3) and ids(third)
    assert set(ids(third)).isdisjoint(ids(second))


def test_another_caller_cannot_continue_it_on_either_replica(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    sid = a.chat(TURN_1, ALICE).json()["session_id"]
    for replica in (a, b):
        stolen = replica.chat(TURN_2, BOB, sid)
        unknown = replica.chat(TURN_2, BOB, "f" * 32)
        assert stolen.status_code == unknown.status_code == 404
        assert stolen.json()["error"]["code"] == unknown.json()["error"]["code"] == "session_not_found"
        assert stolen.json()["error"]["message"].replace(sid, "ID") == unknown.json()["error"]["message"].replace(
            "f" * 32, "ID"
        )
    assert b.chat(TURN_2, ALICE, sid).status_code == 200  # the owner still can


def test_a_redis_that_is_down_fails_chat_turns_cleanly_not_the_service(
    settings_factory: Callable[..., Any], shared_encoders: None
) -> None:
    from fastapi.testclient import TestClient

    from api.http.app import create_app

    settings = settings_factory(sessions={"url": f"redis://127.0.0.1:{free_port()}/0", "timeout_s": 1.0})
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as client:
        turn = client.post("/v1/chat", json=TURN_1)
        assert turn.status_code == 503, turn.text
        assert turn.json()["error"]["code"] == "sessions_unavailable" and turn.headers["Retry-After"] == "1"
        assert "127.0.0.1" not in turn.text
        streamed = client.post("/v1/chat", json={**TURN_1, "stream": True})
        assert streamed.status_code == 503 and streamed.json()["error"]["code"] == "sessions_unavailable"
        ready = client.get("/readyz")  # reported, not gating: recommendations need no session
        assert ready.status_code == 200 and ready.json()["parts"]["sessions"] is False
        assert client.post("/v1/recommendations", json={"text": "casual shirts", "top_k": 3}).status_code == 200
