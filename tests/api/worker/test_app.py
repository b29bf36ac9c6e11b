"""The embedded worker over HTTP: OpenAI protocol, tool calls, streaming, errors; a real tiny model end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.worker.app import create_worker_app
from llms.worker.service import WorkerService
from llms.worker.simulated import SimulatedEngine

TOOLS = [{"type": "function", "function": {"name": "submit_ranking", "parameters": {"type": "object"}}}]
CALL = '<tool_call>\n{"name": "submit_ranking", "arguments": {"ids": ["7", "3"]}}\n</tool_call>'


def chat(model: str = "base", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "rank these"}], **extra}


def client_for(**engine: Any) -> TestClient:
    svc = WorkerService(SimulatedEngine(model_name="base", adapters=["ranker"], **engine))
    return TestClient(create_worker_app(svc))


def sse(response: Any) -> list[dict[str, Any]]:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_models_health_and_metrics() -> None:
    with client_for() as c:
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert ids == ["base", "ranker"]
        assert c.get("/v1/models").json()["data"][1]["parent"] == "base"
        assert c.get("/health").json() == {"status": "ok", "models": ["base", "ranker"]}
        c.post("/v1/chat/completions", json=chat(max_tokens=3))
        assert 'tandem_worker_requests_total{model="base",outcome="ok"} 1.0' in c.get("/metrics").text


def test_tool_calls_are_parsed_when_tools_are_offered() -> None:
    with client_for(reply="Ranking now. " + CALL) as c:
        body = c.post("/v1/chat/completions", json=chat("ranker", tools=TOOLS)).json()
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] == "Ranking now."
        call = choice["message"]["tool_calls"][0]
        assert call["type"] == "function"
        assert call["function"]["name"] == "submit_ranking"
        assert json.loads(call["function"]["arguments"]) == {"ids": ["7", "3"]}
        # Without tools in the request the text is returned as it is, as vLLM does.
        plain = c.post("/v1/chat/completions", json=chat("ranker")).json()["choices"][0]
        assert CALL in plain["message"]["content"]
        assert "tool_calls" not in plain["message"]


def test_streamed_tool_calls_never_leak_markup_into_content() -> None:
    with client_for(reply="Ranking now. " + CALL) as c:
        chunks = sse(c.post("/v1/chat/completions", json=chat("ranker", tools=TOOLS, stream=True)))
    content = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
    assert "<tool_call" not in content
    assert content.strip() == "Ranking now."
    calls = [tc for ch in chunks for tc in ch["choices"][0]["delta"].get("tool_calls") or []]
    assert [c["function"]["name"] for c in calls] == ["submit_ranking"]
    assert calls[0]["index"] == 0
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_malformed_tool_call_stays_text_and_is_counted() -> None:
    with client_for(reply='<tool_call>{"name": "submit_ranking", "arguments": {"ids": [7,') as c:
        message = c.post("/v1/chat/completions", json=chat(tools=TOOLS)).json()["choices"][0]["message"]
        assert message["content"].startswith("<tool_call>")
        assert "tandem_worker_malformed_tool_calls_total 1.0" in c.get("/metrics").text


def test_stream_usage_and_sse_framing() -> None:
    with client_for(reply="one two three") as c:
        r = c.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = sse(r)
    assert "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"]) == "one two three"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (chat("gpt-9"), 404, "model_not_found"),
        ({"model": "base", "messages": []}, 400, "invalid_request"),
        (chat(temperature=5), 400, "invalid_request"),
        (chat(n=2), 400, "invalid_request"),
        ({"model": "base", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "invalid_request"),
        (chat(tool_choice="required"), 400, "invalid_request"),
    ],
)
def test_bad_requests_get_openai_style_errors(body: dict[str, Any], status: int, code: str) -> None:
    with client_for() as c:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
        assert r.json()["error"]["message"]


def test_api_key_guards_the_api_but_not_health() -> None:
    svc = WorkerService(SimulatedEngine(model_name="base"))
    with TestClient(create_worker_app(svc, api_key="s3cret")) as c:
        assert c.post("/v1/chat/completions", json=chat()).status_code == 401
        ok = c.post("/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200


@pytest.fixture(scope="module")
def tiny_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The real engine: a tiny random Qwen2 with a chat template and a LoRA adapter, built here, no download."""
    from finetune.tiny_lm import build_tiny_chat_model, build_tiny_lora_adapter
    from llms.worker.hf_engine import TransformersEngine

    root: Path = tmp_path_factory.mktemp("tiny-worker")
    base = build_tiny_chat_model(root / "tiny-base", seed=0)
    adapter = build_tiny_lora_adapter(base, root / "ranker", seed=1)
    engine = TransformersEngine.load(base, {"tiny-ranker": adapter}, device="cpu", max_batch=4, batch_wait_ms=20)
    with TestClient(create_worker_app(WorkerService(engine))) as c:
        yield c


def test_real_model_serves_base_and_adapter_by_name(tiny_worker: TestClient) -> None:
    assert [m["id"] for m in tiny_worker.get("/v1/models").json()["data"]] == ["tiny-base", "tiny-ranker"]
    greedy = {"temperature": 0, "max_tokens": 8}
    base = tiny_worker.post("/v1/chat/completions", json=chat("tiny-base", **greedy)).json()
    again = tiny_worker.post("/v1/chat/completions", json=chat("tiny-base", **greedy)).json()
    lora = tiny_worker.post("/v1/chat/completions", json=chat("tiny-ranker", **greedy)).json()
    assert base["choices"][0]["message"] == again["choices"][0]["message"]
    assert base["choices"][0]["message"]["content"] != lora["choices"][0]["message"]["content"]
    assert base["usage"]["completion_tokens"] <= 8
    assert base["choices"][0]["finish_reason"] in {"stop", "length"}


def test_real_model_streams_the_same_text(tiny_worker: TestClient) -> None:
    body = chat("tiny-ranker", temperature=0, max_tokens=8, tools=TOOLS)
    whole = tiny_worker.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    chunks = sse(tiny_worker.post("/v1/chat/completions", json={**body, "stream": True}))
    streamed = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
    assert streamed.strip() == (whole.get("content") or "").strip()
    seeded = chat("tiny-base", temperature=1.0, top_k=20, top_p=0.9, seed=11, max_tokens=8)
    first = tiny_worker.post("/v1/chat/completions", json=seeded).json()["choices"][0]["message"]["content"]
    second = tiny_worker.post("/v1/chat/completions", json=seeded).json()["choices"][0]["message"]["content"]
    assert first == second


def test_required_tool_call_is_guided_and_a_bad_schema_is_a_400(tiny_worker: TestClient) -> None:
    submit = {"type": "function", "function": {"name": "submit_ranking", "parameters": {
        "type": "object", "required": ["ids"],
        "properties": {"ids": {"type": "array", "maxItems": 2, "items": {"enum": ["A", "B"]}}}}}}  # fmt: skip
    body = chat("tiny-ranker", temperature=1.5, seed=3, max_tokens=60, tools=[submit], tool_choice="required")
    message = tiny_worker.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    (call,) = message["tool_calls"]  # a random tiny model, guided: one valid call
    assert call["function"]["name"] == "submit_ranking"
    assert set(json.loads(call["function"]["arguments"])["ids"]) <= {"A", "B"}
    schema = {"type": "object", "properties": {"x": {"type": "frobnicate"}}}
    bad = {"type": "function", "function": {"name": "f", "parameters": schema}}
    response = tiny_worker.post("/v1/chat/completions", json={**body, "tools": [bad]})
    assert response.status_code == 400 and "cannot guide tool calls" in response.json()["error"]["message"]


def test_continue_final_message_needs_an_assistant_message_last(tiny_worker: TestClient) -> None:
    body = {"model": "tiny-base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "continue_final_message": True, "add_generation_prompt": False}  # fmt: skip
    response = tiny_worker.post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and "assistant message last" in response.json()["error"]["message"]
    body["messages"].append({"role": "assistant", "content": "Hello"})
    assert tiny_worker.post("/v1/chat/completions", json=body).status_code == 200
    bad_format = {"model": "tiny-base", "messages": [{"role": "user", "content": "hi"}],
                  "response_format": {"type": "yaml"}}  # fmt: skip
    response = tiny_worker.post("/v1/chat/completions", json=bad_format)
    assert response.status_code == 400 and "unsupported response_format" in response.json()["error"]["message"]
