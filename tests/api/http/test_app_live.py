"""Against a live uvicorn server: overload (429), deadline (504), circuit breaker, shared batches, Java client."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from eval.process import free_port
from tests.api.conftest import API_KEY, ImageServer, LiveServer, _handler

URL = "/v1/recommendations"
HEADERS = {"X-API-Key": API_KEY}


def test_deadline_exceeded_is_504(tight_live: LiveServer, image_server: ImageServer) -> None:
    r = httpx.post(tight_live.url + URL, json={"image_url": image_server.url("/slow?s=3")}, headers=HEADERS, timeout=10)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"


def _in_flight(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("tandem_http_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no in-flight gauge")


def test_overload_is_429_with_retry_after(tight_live: LiveServer) -> None:
    # A slow image host of its own, so no other test's breaker state can interfere.
    slow_server = ThreadingHTTPServer(("127.0.0.1", 0), _handler({}))
    threading.Thread(target=slow_server.serve_forever, daemon=True).start()
    slow_url = f"http://127.0.0.1:{slow_server.server_address[1]}/slow?s=2"
    first: dict[str, Any] = {}

    def slow() -> None:
        first["r"] = httpx.post(tight_live.url + URL, json={"image_url": slow_url}, headers=HEADERS, timeout=10)

    t = threading.Thread(target=slow)
    t.start()
    try:
        for _ in range(200):
            if _in_flight(tight_live.url) >= 1:
                break
            time.sleep(0.005)
        r = httpx.post(tight_live.url + URL, json={"text": "bag"}, headers=HEADERS, timeout=10)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 1
    finally:
        t.join()
        slow_server.shutdown()
        slow_server.server_close()
    assert first["r"].status_code == 504  # the tight server's deadline is 1 s
    assert httpx.post(tight_live.url + URL, json={"text": "bag"}, headers=HEADERS).status_code == 200


def test_circuit_breaker_opens_on_a_dead_storage(tight_live: LiveServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}/x.jpg"  # nothing listens there
    codes = []
    for _ in range(4):
        r = httpx.post(tight_live.url + URL, json={"image_url": dead}, headers=HEADERS, timeout=10)
        codes.append((r.status_code, r.json()["error"]["code"]))
    assert codes[:2] == [(502, "storage_error")] * 2
    assert codes[2:] == [(503, "storage_unavailable")] * 2
    assert int(r.headers["retry-after"]) >= 1
    metrics = httpx.get(tight_live.url + "/metrics").text
    port = dead.split(":")[2].split("/", maxsplit=1)[0]
    assert f'tandem_circuit_breaker_state{{circuit="url:127.0.0.1:{port}"}} 2.0' in metrics
    # Other hosts are not affected by this breaker.
    assert httpx.post(tight_live.url + URL, json={"text": "bag"}, headers=HEADERS).status_code == 200


def _batch_counts(metrics: str) -> tuple[float, float]:
    values = {}
    for line in metrics.splitlines():
        if line.startswith(("tandem_encoder_batch_size_count", "tandem_encoder_batch_size_sum")):
            key, _, value = line.partition(" ")
            values[key] = float(value)
    return values["tandem_encoder_batch_size_sum"], values["tandem_encoder_batch_size_count"]


def test_concurrent_requests_share_encoder_batches(main_live: LiveServer, small_catalogue_dir: Path) -> None:
    photos = sorted((small_catalogue_dir / "images").glob("*.jpg"))[:32]
    before = _batch_counts(httpx.get(main_live.url + "/metrics").text)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=main_live.url, headers=HEADERS, timeout=30) as c:
            return await asyncio.gather(
                *[c.post(URL, json={"image_path": p.name, "top_k": 3, "mode": "flat"}) for p in photos]
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    # Each answer holds the photo's own product at cosine ~1: batching did not mix queries up.
    for photo, r in zip(photos, responses, strict=True):
        own = [it for it in r.json()["items"] if it["product_id"] == photo.stem]
        assert own and own[0]["score"] > 0.999, (photo.stem, r.json()["items"])
    after = _batch_counts(httpx.get(main_live.url + "/metrics").text)
    queries, batches = after[0] - before[0], after[1] - before[1]
    assert queries == len(photos)
    assert batches < queries, "concurrent requests should have shared encoder batches"


@pytest.mark.skipif(shutil.which("java") is None, reason="no JDK on this machine")
def test_java_client_against_the_live_service(main_live: LiveServer, small_catalogue_dir: Path) -> None:
    source = Path(__file__).resolve().parents[3] / "api" / "clients" / "java" / "TandemClient.java"
    photo = sorted((small_catalogue_dir / "images").glob("*.jpg"))[11]
    cmd = ["java", str(source), "--url", main_live.url, "--key", API_KEY, "--image-path", photo.name]
    done = subprocess.run([*cmd, "--top-k", "3"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("request ") and len(lines) == 4
    assert lines[1].split()[1] == photo.stem
    bad = subprocess.run(
        ["java", str(source), "--url", main_live.url, "--key", "wrong", "--text", "bag"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "401 unauthorized" in bad.stderr
