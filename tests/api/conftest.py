"""Fixtures for the HTTP service: a small real index, image servers, an S3 server, apps and a live server."""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from eval.process import free_port

API_KEY = "test-key-123"
BUCKET = "buyer-photos"


@pytest.fixture(scope="session")
def api_home(
    small_catalogue_dir: Path, tmp_path_factory: pytest.TempPathFactory, text_encoder: Any, image_encoder: Any
) -> Path:
    """A TANDEM_HOME holding a Qdrant Edge index of the small catalogue (tiny tower + MiniLM)."""
    from api.settings import Settings
    from retrieval.catalogue import load_catalogue
    from retrieval.edge_store import EdgeStore
    from retrieval.indexer import build_index

    home = tmp_path_factory.mktemp("api-home")
    store = EdgeStore(Settings(home=home).qdrant_dir)
    build_index(load_catalogue(small_catalogue_dir), store, text_encoder, image_encoder, batch_size=128)
    store.close()
    return home


@pytest.fixture(scope="session")
def shared_encoders(text_encoder: Any, image_encoder: Any) -> Iterator[None]:
    """Apps built in tests reuse the session's encoders instead of loading them again."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("api.http.resources.build_text_encoder", lambda settings: text_encoder)
        mp.setattr("api.http.resources.build_image_encoder", lambda settings: image_encoder)
        yield


@dataclass
class ImageServer:
    """A loopback HTTP server for image URLs: files, redirects, slow answers and errors."""

    port: int
    files: dict[str, bytes]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _handler(files: dict[str, bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parsed = urlparse(self.path)
            query = parse_qs(parsed.query)
            if parsed.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", query["to"][0])
                self.end_headers()
                return
            if parsed.path == "/slow":
                time.sleep(float(query.get("s", ["3"])[0]))
            if parsed.path == "/error":
                self.send_response(500)
                self.end_headers()
                return
            name = parsed.path.rsplit("/", 1)[-1]
            data = files.get(name)
            if data is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture(scope="session")
def image_server(small_catalogue_dir: Path) -> Iterator[ImageServer]:
    files = {p.name: p.read_bytes() for p in sorted((small_catalogue_dir / "images").glob("*.jpg"))[:50]}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ImageServer(server.server_address[1], files)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def s3_server(small_catalogue_dir: Path) -> Iterator[str]:
    """An S3-compatible server (moto) on loopback with a bucket of buyer photos."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    s3.create_bucket(Bucket=BUCKET)
    for p in sorted((small_catalogue_dir / "images").glob("*.jpg"))[:5]:
        s3.put_object(Bucket=BUCKET, Key=f"2026/{p.name}", Body=p.read_bytes())
    yield url
    server.stop()


def make_settings(home: Path, catalogue: Path, tower: Path, **sections: dict[str, Any]) -> Any:
    from api.settings import Settings

    base: dict[str, Any] = {
        "home": home,
        "catalogue": {"path": catalogue},
        "encoders": {"image_checkpoint": tower},
        "api": {"keys": [API_KEY], "batch_wait_ms": 1.0},
        "images": {"max_bytes": 4 * 1024 * 1024},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Settings(**base)


@pytest.fixture(scope="session")
def settings_factory(
    api_home: Path, small_catalogue_dir: Path, tiny_tower_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Any]:
    """Settings over a private copy of the index (a Qdrant Edge shard is opened by one store at a time)."""

    def make(**sections: dict[str, Any]) -> Any:
        home = tmp_path_factory.mktemp("app-home")
        shutil.copytree(api_home, home, dirs_exist_ok=True)
        return make_settings(home, small_catalogue_dir, tiny_tower_dir, **sections)

    return make


def _main_sections(s3_url: str) -> dict[str, Any]:
    return {
        "storage": {
            "url_allow": ["127.0.0.1"],
            "s3_endpoint_url": s3_url,
            "s3_access_key_id": "testing",
            "s3_secret_access_key": "testing",
            "s3_buckets": [BUCKET],
        }
    }


@pytest.fixture(scope="session")
def main_settings(settings_factory: Callable[..., Any], s3_server: str) -> Any:
    return settings_factory(**_main_sections(s3_server))


@pytest.fixture(scope="session")
def client(main_settings: Any, shared_encoders: None) -> Iterator[Any]:
    """The service with keys, an allow-listed 127.0.0.1 and an S3 server, in process (TestClient)."""
    from fastapi.testclient import TestClient

    from api.http.app import create_app

    with TestClient(create_app(main_settings), headers={"X-API-Key": API_KEY}) as c:
        yield c


@dataclass
class LiveServer:
    url: str
    app: Any


def start_live(app: Any) -> tuple[Any, threading.Thread, str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def tight_live(settings_factory: Callable[..., Any], shared_encoders: None) -> Iterator[LiveServer]:
    """A live uvicorn server with tight limits: 1 request in flight, a 1 s deadline, a 2-failure breaker."""
    from api.http.app import create_app

    settings = settings_factory(
        api={"max_in_flight": 1, "deadline_s": 1.0},
        storage={"url_allow": ["127.0.0.1"], "breaker_threshold": 2, "breaker_reset_s": 30, "connect_timeout_s": 0.5},
    )
    app = create_app(settings)
    server, thread, url = start_live(app)
    yield LiveServer(url, app)
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture(scope="session")
def main_live(settings_factory: Callable[..., Any], s3_server: str, shared_encoders: None) -> Iterator[LiveServer]:
    """The main service as a live uvicorn server (for the Java client and concurrency)."""
    from api.http.app import create_app

    app = create_app(settings_factory(**_main_sections(s3_server)))
    server, thread, url = start_live(app)
    yield LiveServer(url, app)
    server.should_exit = True
    thread.join(timeout=15)


def jpeg_bytes(size: tuple[int, int] = (60, 80), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def small_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded worker serving a small base model as tandem-base and a LoRA adapter as tandem-ranker."""
    import uvicorn

    from api.worker.app import create_worker_app
    from finetune.tiny_lm import build_tiny_chat_model, build_tiny_lora_adapter
    from llms.worker.hf_engine import TransformersEngine
    from llms.worker.service import WorkerService

    root = tmp_path_factory.mktemp("small-models")
    base = build_tiny_chat_model(root / "base")
    adapter = build_tiny_lora_adapter(base, root / "ranker", seed=3)
    engine = TransformersEngine.load(base, {"tandem-ranker": adapter}, device="cpu")
    app = create_worker_app(WorkerService(engine, served_name="tandem-base"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        threading.Event().wait(0.02)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def chat_live(settings_factory: Callable[..., Any], shared_encoders: None, small_worker: str) -> Iterator[LiveServer]:
    from api.http.app import create_app

    settings = settings_factory(
        llm={"workers": [{"url": small_worker, "name": "small", "max_concurrency": 4}]},
        chat={"explainer_max_tokens": 24, "ranker_deadline_s": 60, "explainer_deadline_s": 60},
        api={"chat_deadline_s": 120},
    )
    server, thread, url = start_live(create_app(settings))
    yield LiveServer(url, None)
    server.should_exit = True
    thread.join(timeout=15)
