"""The fairness benchmark's parts: the raw-HTTP flooder's counts, the verdict, and the reports."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from eval.bench_fairness import FairnessConfig, flood, summarise, write_reports


@pytest.fixture
def alternating_server() -> Iterator[tuple[int, Counter[int]]]:
    """A keep-alive server that answers 200 and 429 in turn, counting what it sent."""
    sent: Counter[int] = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            assert self.headers["X-API-Key"] == "key-a"
            with lock:
                status = 429 if sum(sent.values()) % 2 else 200
                sent[status] += 1
            body = b'{"error": {}}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], sent
    server.shutdown()
    server.server_close()


def test_the_flooder_counts_every_answer_by_status(alternating_server: tuple[int, Counter[int]]) -> None:
    port, sent = alternating_server
    counts = flood(port, "key-a", connections=3, duration_s=0.5)
    assert counts == {str(status): n for status, n in sent.items()}
    assert counts["200"] > 0 and counts["429"] > 0


def _report(quiet_p95: float, flooded_p95: float, b_statuses: dict[str, int]) -> dict[str, Any]:
    phase = {"b": {"p50": 1.0, "p95": flooded_p95, "max": 2.0, "n": 10}, "b_statuses": b_statuses,
             "a_requests": 100, "a_rps": 50.0, "a_ok_rps": 5.0, "a_429_share": 0.9}  # fmt: skip
    return {
        "config": {**FairnessConfig().__dict__},
        "machine": {"cpu": "Test CPU", "logical_cores": 2, "ram_gb": 4.0, "gpu": "none"},
        "generated": "2026-01-01T00:00:00+00:00",
        "quiet": {"b": {"p50": 1.0, "p95": quiet_p95, "max": 2.0, "n": 10}, "b_statuses": {"200": 10}},
        "flooded": phase,
    }


@pytest.mark.parametrize(
    ("quiet", "flooded", "statuses", "passed"),
    [
        (10.0, 20.0, {"200": 10}, True),  # exactly 2x
        (10.0, 20.1, {"200": 10}, False),
        (10.0, 5.0, {"200": 9, "429": 1}, False),  # B itself refused: not fair, however fast
    ],
)
def test_the_verdict_is_the_p95_ratio_and_every_b_request_answered(
    quiet: float, flooded: float, statuses: dict[str, int], passed: bool
) -> None:
    cfg = FairnessConfig(no_hold=False, control=False)
    report = summarise(_report(quiet, flooded, statuses), cfg)
    assert report["passed"] is passed
    assert (report["quiet_p95_ms"], report["flooded_p95_ms"]) == (quiet, flooded)
    assert report["ratio"] == round(flooded / quiet, 2) and report["a_429_share"] == 0.9


def test_reports_say_the_machine_the_figures_and_the_verdict(tmp_path: Path) -> None:
    cfg = FairnessConfig(no_hold=False, control=False)
    report = summarise(_report(10.0, 30.0, {"200": 10}), cfg)
    json_path, md_path = write_reports(report, tmp_path)
    assert json.loads(json_path.read_text())["flooded_p95_ms"] == 30.0
    md = md_path.read_text()
    assert "Machine: Test CPU, 2 cores" in md and "**MISS**" in md and "ratio 3.0" in md
