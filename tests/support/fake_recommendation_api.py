"""A stand-in for ``tandem serve`` in the load-test tests: stdlib only, the same routes and contract.

``python tests/eval/fake_recommendation_api.py PORT`` serves ``GET /readyz``, ``GET /metrics``
(Prometheus text with an encoder batch-size histogram and stage timings) and
``POST /v1/recommendations``: it checks ``X-API-Key`` against ``TANDEM_API__KEYS``, downloads
``image_url`` (so the image server is really hit) and answers ``top_k`` items. With
``FAKE_API_FAIL_EVERY=N``, every N-th request is answered 502, to exercise failure counting.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEYS = {k.strip() for k in os.environ.get("TANDEM_API__KEYS", "").split(",") if k.strip()}
FAIL_EVERY = int(os.environ.get("FAKE_API_FAIL_EVERY") or 0)
_lock = threading.Lock()
_stats = {"requests": 0, "fetch_s": 0.0, "seen": 0}


def _metrics() -> str:
    with _lock:
        n, fetch = _stats["requests"], _stats["fetch_s"]
    return (
        "# HELP tandem_encoder_batch_size Queries per encoder batch.\n"
        "# TYPE tandem_encoder_batch_size histogram\n"
        f'tandem_encoder_batch_size_bucket{{le="2.0"}} {n}\n'
        f'tandem_encoder_batch_size_bucket{{le="+Inf"}} {n}\n'
        f"tandem_encoder_batch_size_count {n}\n"
        f"tandem_encoder_batch_size_sum {2 * n}\n"
        "# HELP tandem_stage_duration_seconds Time per stage.\n"
        "# TYPE tandem_stage_duration_seconds histogram\n"
        f'tandem_stage_duration_seconds_bucket{{le="+Inf",stage="fetch"}} {n}\n'
        f'tandem_stage_duration_seconds_count{{stage="fetch"}} {n}\n'
        f'tandem_stage_duration_seconds_sum{{stage="fetch"}} {fetch}\n'
        "# HELP tandem_http_requests_total Requests.\n"
        "# TYPE tandem_http_requests_total counter\n"
        f'tandem_http_requests_total{{route="/v1/recommendations",status="200"}} {n}\n'
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/readyz":
            self._send(200, b'{"ready": true, "detail": {"fake": true}}')
        elif self.path == "/metrics":
            self._send(200, _metrics().encode(), "text/plain; version=0.0.4")
        else:
            self._send(404, b'{"error": {"code": "not_found", "message": "", "request_id": null}}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path != "/v1/recommendations":
            self._send(404, b"{}")
            return
        if self.headers.get("X-API-Key") not in KEYS:
            self._send(401, b'{"error": {"code": "unauthorized", "message": "", "request_id": null}}')
            return
        url = body["image_url"]
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as resp:
            data = resp.read()
        fetch = time.perf_counter() - t0
        pid = url.rsplit("/", 1)[-1].removesuffix(".jpg")
        with _lock:
            _stats["seen"] += 1
            fail = FAIL_EVERY > 0 and _stats["seen"] % FAIL_EVERY == 0
        if fail or not data:
            self._send(502, b'{"error": {"code": "upstream", "message": "", "request_id": null}}')
            return
        with _lock:
            _stats["requests"] += 1
            _stats["fetch_s"] += fetch
        items = [{"product_id": f"{pid}-{i}", "score": 1.0 - i / 100} for i in range(int(body.get("top_k", 10)))]
        self._send(200, json.dumps({"request_id": "x", "items": items}).encode())


class Server(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
