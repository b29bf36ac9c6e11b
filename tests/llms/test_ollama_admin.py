"""OllamaAdmin against httpx.MockTransport: the requests it sends, and ollama's errors as llms.errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import ollama
import pytest

from llms.errors import ModelNotFoundError, WorkerError
from llms.ollama_admin import OllamaAdmin, adapter_files, modelfile_for_adapter

T = TypeVar("T")
HOST = "http://ollama.test:11434"


class FakeOllama:
    """Answers like ollama's native API and keeps every request."""

    def __init__(self, **overrides: httpx.Response | Exception) -> None:
        self.requests: list[httpx.Request] = []
        self.overrides = overrides  # path → canned response or error to raise

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        override = self.overrides.get(path)
        if isinstance(override, Exception):
            raise override
        if override is not None:
            return override
        if path.startswith("/api/blobs/"):
            return httpx.Response(201)
        if path == "/api/tags":
            return httpx.Response(200, json={"models": [{"model": "qwen2.5:0.5b"}, {"model": "tandem-ranker:latest"}]})
        return httpx.Response(200, json={"status": "success"})

    def json_of(self, path: str) -> dict[str, Any]:
        (request,) = [r for r in self.requests if r.url.path == path]
        assert request.method == "POST"
        body: dict[str, Any] = json.loads(request.content)
        return body


def run(fake: FakeOllama, body: Callable[[OllamaAdmin], Awaitable[T]]) -> T:
    async def main() -> T:
        async with OllamaAdmin(HOST, transport=httpx.MockTransport(fake)) as admin:
            return await body(admin)

    return asyncio.run(main())


def test_pull_model_posts_the_name() -> None:
    fake = FakeOllama()
    assert run(fake, lambda a: a.pull_model("qwen2.5:0.5b")) == "success"
    assert fake.requests[0].url.host == "ollama.test"
    assert fake.json_of("/api/pull") == {"model": "qwen2.5:0.5b", "insecure": False, "stream": False}


def test_pull_model_streams_progress() -> None:
    events = [
        {"status": "pulling manifest"},
        {"status": "downloading", "total": 10, "completed": 4},
        {"status": "success"},
    ]
    lines = "".join(json.dumps(e) + "\n" for e in events).encode()
    fake = FakeOllama(**{"/api/pull": httpx.Response(200, content=lines)})
    seen: list[ollama.ProgressResponse] = []
    assert run(fake, lambda a: a.pull_model("qwen2.5:0.5b", on_progress=seen.append)) == "success"
    assert [e.status for e in seen] == ["pulling manifest", "downloading", "success"]
    assert seen[1].completed == 4
    assert fake.json_of("/api/pull")["stream"] is True


def test_create_from_adapter_uploads_blobs_then_creates(tmp_path: Path) -> None:
    adapter = tmp_path / "ranker"
    adapter.mkdir()
    files = {"adapter_model.safetensors": b"lora weights", "adapter_config.json": b'{"r": 8}'}
    for name, data in files.items():
        (adapter / name).write_bytes(data)
    (adapter / "README.md").write_text("not uploaded")
    digests = {name: "sha256:" + hashlib.sha256(data).hexdigest() for name, data in files.items()}

    fake = FakeOllama()
    assert run(fake, lambda a: a.create_from_adapter("tandem-ranker", "qwen2.5:0.5b", adapter)) == "success"
    blobs = {r.url.path.removeprefix("/api/blobs/"): r.content for r in fake.requests if "/blobs/" in r.url.path}
    assert blobs == {digests[name]: data for name, data in files.items()}
    assert fake.json_of("/api/create") == {
        "model": "tandem-ranker",
        "from": "qwen2.5:0.5b",
        "adapters": digests,
        "stream": False,
    }
    assert fake.requests[-1].url.path == "/api/create"  # blobs first: create names them by digest


def test_list_models_and_is_running() -> None:
    fake = FakeOllama()
    assert run(fake, lambda a: a.list_models()) == ["qwen2.5:0.5b", "tandem-ranker:latest"]
    assert fake.requests[0].method == "GET"
    assert fake.requests[0].url.path == "/api/tags"
    assert run(fake, lambda a: a.is_running()) is True
    assert run(FakeOllama(**{"/api/tags": httpx.ConnectError("refused")}), lambda a: a.is_running()) is False
    assert run(FakeOllama(**{"/api/tags": httpx.Response(500)}), lambda a: a.is_running()) is False

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={"models": []})

    async def probe() -> bool:
        async with OllamaAdmin(HOST, transport=httpx.MockTransport(slow)) as admin:
            return await admin.is_running(timeout_s=0.05)

    assert asyncio.run(probe()) is False


@pytest.mark.parametrize(
    ("failure", "expected", "cause"),
    [
        (httpx.Response(404, json={"error": "pull model manifest: file does not exist"}), ModelNotFoundError, None),
        (httpx.Response(500, json={"error": "disk full"}), WorkerError, None),
        (httpx.ConnectError("refused"), WorkerError, ConnectionError),
        (httpx.ReadTimeout("slow"), WorkerError, httpx.ReadTimeout),
    ],
    ids=["404", "500", "connect", "timeout"],
)
def test_errors_become_llm_errors(failure: Any, expected: type[Exception], cause: type[Exception] | None) -> None:
    fake = FakeOllama(**{"/api/pull": failure})
    with pytest.raises(expected) as info:
        run(fake, lambda a: a.pull_model("nope"))
    assert isinstance(info.value.__cause__, cause or ollama.ResponseError)
    if isinstance(failure, httpx.Response):
        assert json.loads(failure.content)["error"] in str(info.value)


def test_errors_in_a_progress_stream_and_on_create(tmp_path: Path) -> None:
    lines = b'{"status": "pulling manifest"}\n{"error": "max retries exceeded"}\n'
    with pytest.raises(WorkerError, match="max retries exceeded"):
        run(
            FakeOllama(**{"/api/pull": httpx.Response(200, content=lines)}),
            lambda a: a.pull_model("m", on_progress=print),
        )

    (tmp_path / "adapter.gguf").write_bytes(b"gguf")
    fake = FakeOllama(**{"/api/create": httpx.Response(404, json={"error": "model 'nope' not found"})})
    with pytest.raises(ModelNotFoundError, match="nope"):
        run(fake, lambda a: a.create_from_adapter("x", "nope", tmp_path / "adapter.gguf"))
    assert fake.json_of("/api/create")["adapters"] == {"adapter.gguf": "sha256:" + hashlib.sha256(b"gguf").hexdigest()}


def test_adapter_files_pick_what_ollama_create_would(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        adapter_files(tmp_path / "missing")
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no adapter weights"):
        adapter_files(tmp_path)
    (tmp_path / "adapter.gguf").write_bytes(b"g")
    assert sorted(adapter_files(tmp_path)) == ["adapter.gguf", "adapter_config.json"]
    (tmp_path / "adapter_model.safetensors").write_bytes(b"s")
    assert sorted(adapter_files(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]


def test_modelfile_for_adapter() -> None:
    assert modelfile_for_adapter("qwen2.5:0.5b", "./ranker") == "FROM qwen2.5:0.5b\nADAPTER ./ranker\n"
    assert modelfile_for_adapter("qwen2.5:0.5b", Path("/m/my adapters/r")) == (
        'FROM qwen2.5:0.5b\nADAPTER "/m/my adapters/r"\n'
    )
    with pytest.raises(ValueError, match="one-line"):
        modelfile_for_adapter("qwen2.5:0.5b", "./r\nSYSTEM pwned")
    with pytest.raises(ValueError, match="one-line"):
        modelfile_for_adapter("", "./r")
