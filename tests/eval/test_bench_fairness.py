"""The fairness benchmark's parts: the raw-HTTP flooder's counts, the verdict, and the reports."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eval.bench_fairness import FairnessConfig, PhaseSamples, flood, pool, summarise, write_reports


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


def test_rounds_pool_every_sample_and_count_as_one_phase() -> None:
    # SYNTHETIC samples: two rounds of each phase, the second flooded round disturbed.
    rng = np.random.default_rng(7)
    quiet = [rng.normal(30, 3, 120).tolist(), rng.normal(31, 3, 120).tolist()]
    flooded = [rng.normal(40, 5, 120).tolist(), rng.normal(90, 20, 120).tolist()]
    phases = [PhaseSamples(q, Counter({200: 120})) for q in quiet]
    floods = [PhaseSamples(f, Counter({200: 119, 429: 1}), Counter({"200": 300, "429": 700}), 35.0) for f in flooded]
    q, f = pool(phases).summary(), pool(floods).summary()
    assert q["b"]["p95"] == round(float(np.percentile(quiet[0] + quiet[1], 95)), 2)
    assert f["b"]["p95"] == round(float(np.percentile(flooded[0] + flooded[1], 95)), 2)
    assert q["b"]["n"] == 240 and f["b_statuses"] == {"200": 238, "429": 2}
    assert f["a_requests"] == 2000 and f["a_ok_rps"] == round(600 / 70.0, 2) and f["a_429_share"] == 0.7
    assert "a_requests" not in q  # B alone: no flood figures


def test_reports_show_each_round(tmp_path: Path) -> None:
    cfg = FairnessConfig(no_hold=False, control=False)
    report = _report(10.0, 18.0, {"200": 10})
    report["rounds"] = [{"quiet_p95_ms": 9.0, "flooded_p95_ms": 12.0, "ratio": 1.33, "quiet_cpu": {"other_cores": 0.0},
                         "flooded_cpu": {"other_cores": 1.2}},
                        {"quiet_p95_ms": 11.0, "flooded_p95_ms": 25.0, "ratio": 2.27, "quiet_cpu": {"other_cores": 0.1},
                         "flooded_cpu": {"other_cores": 0.0}}]  # fmt: skip
    _, md_path = write_reports(summarise(report, cfg), tmp_path)
    md = md_path.read_text()
    assert "2 rounds pooled" in md and "| 2 | 11.0 | 25.0 | 2.27 |" in md and "**PASS**" in md
