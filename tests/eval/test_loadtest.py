"""Tests for eval.loadtest and eval/locustfile.py: Locust's output, Prometheus text, targets, report, client.

The slow tests run the whole load test: once against a stand-in service (every moving part
but the real API), once in ``--quick`` mode against ``tandem serve`` on a small catalogue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from eval.loadtest import (
    ENV_IDS_FILE,
    ENV_IMAGE_BASE,
    ENV_KEY,
    ENV_TOP_K,
    ENV_WAIT,
    ClientConfig,
    LoadtestConfig,
    build_payload,
    check_response,
    evaluate_targets,
    free_port,
    index_missing,
    load_ids,
    mean_batch_size,
    metrics_delta,
    parse_failures_csv,
    parse_history_csv,
    parse_prometheus,
    parse_stats_csv,
    parse_wait,
    pick_ids,
    run,
    stage_means_ms,
    summarise_locust_entry,
    tower_missing,
    wait_for_quiet,
    write_report,
)
from eval.process import Service, wait_http

ROOT = Path(__file__).resolve().parents[2]
FAKE_API = Path(__file__).parents[1] / "support" / "fake_recommendation_api.py"

# Locust 2.x CSV output (columns and values as Locust writes them).
STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)
HISTORY_HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,"
    "Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,"
    "Total Min Response Time,Total Max Response Time,Total Average Content Size"
)
STATS_CSV = (
    STATS_HEADER
    + """
POST,/v1/recommendations,1200,3,88,95.5,41.2,612.9,2410.0,40.1,0.1,88,97,104,110,130,150,190,240,600,610,610
GET,/other,10,0,5,5.0,4.0,6.0,10.0,0.3,0.0,5,5,5,5,6,6,6,6,6,6,6
,Aggregated,1210,3,87,95.1,4.0,612.9,2390.3,40.4,0.1,87,96,103,110,130,150,190,240,600,610,610
"""
)

EMPTY_STATS_CSV = (
    STATS_HEADER
    + """
,Aggregated,0,0,0,0,0,0,0,0.0,0.0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A
"""
)

HISTORY_CSV = (
    HISTORY_HEADER
    + """
1795303329,0,,Aggregated,0.000000,0.000000,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,0,0,0,0.0,0,0,0
1795303330,50,,Aggregated,0.000000,0.000000,110,120,130,140,160,180,200,210,220,220,220,42,0,110,118.4,3.2,220.0,169.0
1795303330,50,POST,/v1/recommendations,0.000000,0.000000,110,120,130,140,160,180,200,210,220,220,220,42,0,110,118.4,3.2,220.0,169.0
1795303332,50,,Aggregated,42.000000,1.000000,100,110,120,130,150,170,190,200,210,210,210,142,2,100,110.1,3.2,220.0,169.0
1795303332,50,,Aggregated,42.000000,1.000000,100,110,120,130,150,170,190,200,210,210,210,142,2,100,110.1,3.2,220.0,169.0
1795303333,50,,Aggregated,42.000000,1.000000,100,110,120,130,150,170,190,200,210,210,210,20,0,100,110.1,3.2,220.0,169.0
1795303334,50,,Aggregated,42.000000,1.000000,100,110,120,130,150,170,190,200,210,210,210,65,0,100,110.1,3.2,220.0,169.0
"""
)

FAILURES_CSV = """\
Method,Name,Error,Occurrences,First Seen,Last Seen
POST,/v1/recommendations,HTTP 503 (overloaded),3,2026-11-21T23:22:09Z,2026-11-21T23:22:14Z
POST,/v1/recommendations,CatchResponseError('the answer has no item'),1,2026-11-21T23:22:10Z,2026-11-21T23:22:10Z
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- #
# Locust's CSV
# --------------------------------------------------------------------------- #


def test_parse_stats_csv_reads_the_aggregated_row(tmp_path: Path) -> None:
    stats = parse_stats_csv(_write(tmp_path, "s_stats.csv", STATS_CSV))
    assert stats["requests"] == 1210
    assert stats["failures"] == 3
    assert stats["error_rate"] == pytest.approx(3 / 1210)
    assert stats["mean_ms"] == pytest.approx(95.1)
    assert stats["median_ms"] == 87
    assert stats["min_ms"] == 4.0  # the Aggregated row's, not the POST row's 41.2
    assert stats["rps"] == pytest.approx(40.4)
    assert (stats["p50_ms"], stats["p95_ms"], stats["p99_ms"]) == (87, 150, 240)
    assert stats["p99_9_ms"] == 600
    assert stats["p100_ms"] == 610


def test_parse_stats_csv_picks_a_named_row_and_refuses_a_missing_one(tmp_path: Path) -> None:
    path = _write(tmp_path, "s_stats.csv", STATS_CSV)
    assert parse_stats_csv(path, name="/v1/recommendations")["mean_ms"] == pytest.approx(95.5)
    with pytest.raises(ValueError, match="no 'nothing' row"):
        parse_stats_csv(path, name="nothing")


def test_parse_stats_csv_without_requests_has_no_latency(tmp_path: Path) -> None:
    stats = parse_stats_csv(_write(tmp_path, "s_stats.csv", EMPTY_STATS_CSV))
    assert stats["requests"] == 0
    assert stats["error_rate"] is None
    assert stats["mean_ms"] is None
    assert stats["p95_ms"] is None
    assert stats["rps"] == 0.0


def test_parse_history_csv_keeps_aggregated_rows_once_in_time_order(tmp_path: Path) -> None:
    rows = parse_history_csv(_write(tmp_path, "s_stats_history.csv", HISTORY_CSV))
    # The repeated row is kept once, the POST row skipped.
    assert [r["t"] for r in rows] == [0, 1, 3, 4, 5]
    assert rows[0]["p95_ms"] is None  # N/A before the first answer
    assert rows[1]["users"] == 50
    assert rows[2]["p50_ms"] == 100
    assert rows[2]["p95_ms"] == 170
    assert rows[2]["total_failures"] == 2
    # Throughput per interval from the running count: 42 requests in 1 s, then 100 in 2 s.
    assert rows[0]["interval_rps"] is None
    assert rows[1]["interval_rps"] == pytest.approx(42.0)
    assert rows[2]["interval_rps"] == pytest.approx(50.0)
    # Statistics reset (--reset-stats): no rate across the reset, then 45 requests in 1 s.
    assert rows[3]["interval_rps"] is None
    assert rows[4]["interval_rps"] == pytest.approx(45.0)


def test_parse_failures_csv(tmp_path: Path) -> None:
    assert parse_failures_csv(_write(tmp_path, "s_failures.csv", FAILURES_CSV)) == [
        {"method": "POST", "name": "/v1/recommendations", "error": "HTTP 503 (overloaded)", "occurrences": 3},
        {"method": "POST", "name": "/v1/recommendations", "error": "the answer has no item", "occurrences": 1},
    ]


class _FakeEntry:
    num_requests = 4
    num_failures = 1
    median_response_time = 20
    avg_response_time = 25.0
    min_response_time = 10.0
    max_response_time = 50.0
    total_rps = 2.0
    total_fail_per_sec = 0.5

    def get_response_time_percentile(self, p: float) -> float:
        return 100.0 * p


def test_summarise_locust_entry_uses_the_stats_csv_keys(tmp_path: Path) -> None:
    errors = [{"error": "CatchResponseError('HTTP 500')", "occurrences": 1}]
    summary = summarise_locust_entry(_FakeEntry(), [0.5, 0.95, 0.999], errors)
    csv_stats = parse_stats_csv(_write(tmp_path, "s_stats.csv", STATS_CSV))
    assert {"requests", "failures", "error_rate", "mean_ms", "rps", "p50_ms", "p95_ms", "p99_9_ms"} <= set(summary)
    assert {"p50_ms", "p95_ms", "p99_9_ms"} <= set(csv_stats)
    assert summary["error_rate"] == 0.25
    assert summary["p95_ms"] == pytest.approx(95.0)
    assert summary["p99_9_ms"] == pytest.approx(99.9)
    assert summary["errors"] == [{"error": "HTTP 500", "occurrences": 1}]


# --------------------------------------------------------------------------- #
# Prometheus
# --------------------------------------------------------------------------- #

METRICS_BEFORE = """\
# HELP tandem_encoder_batch_size Queries per encoder batch.
# TYPE tandem_encoder_batch_size histogram
tandem_encoder_batch_size_bucket{le="1.0"} 10.0
tandem_encoder_batch_size_bucket{le="+Inf"} 10.0
tandem_encoder_batch_size_count 10.0
tandem_encoder_batch_size_sum 10.0
# HELP tandem_stage_duration_seconds Time per stage.
# TYPE tandem_stage_duration_seconds histogram
tandem_stage_duration_seconds_bucket{le="+Inf",stage="encode"} 10.0
tandem_stage_duration_seconds_count{stage="encode"} 10.0
tandem_stage_duration_seconds_sum{stage="encode"} 0.1
# HELP tandem_http_requests_total Requests.
# TYPE tandem_http_requests_total counter
tandem_http_requests_total{route="/v1/recommendations",status="200"} 10.0
# HELP python_gc_objects_collected_total GC.
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 5.0
"""

METRICS_AFTER = """\
# HELP tandem_encoder_batch_size Queries per encoder batch.
# TYPE tandem_encoder_batch_size histogram
tandem_encoder_batch_size_bucket{le="1.0"} 10.0
tandem_encoder_batch_size_bucket{le="+Inf"} 20.0
tandem_encoder_batch_size_count 20.0
tandem_encoder_batch_size_sum 90.0
# HELP tandem_stage_duration_seconds Time per stage.
# TYPE tandem_stage_duration_seconds histogram
tandem_stage_duration_seconds_bucket{le="+Inf",stage="encode"} 30.0
tandem_stage_duration_seconds_count{stage="encode"} 30.0
tandem_stage_duration_seconds_sum{stage="encode"} 0.7
tandem_stage_duration_seconds_bucket{le="+Inf",stage="fetch"} 20.0
tandem_stage_duration_seconds_count{stage="fetch"} 20.0
tandem_stage_duration_seconds_sum{stage="fetch"} 0.2
# HELP tandem_http_requests_total Requests.
# TYPE tandem_http_requests_total counter
tandem_http_requests_total{route="/v1/recommendations",status="200"} 30.0
tandem_http_requests_total{route="/v1/recommendations",status="503"} 2.0
# HELP python_gc_objects_collected_total GC.
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 50.0
"""


def test_metrics_delta_between_two_scrapes() -> None:
    delta = metrics_delta(parse_prometheus(METRICS_BEFORE), parse_prometheus(METRICS_AFTER))
    # 10 more batches holding 80 queries.
    assert mean_batch_size(delta) == pytest.approx(8.0)
    # encode: 20 more observations, 0.6 s → 30 ms; fetch is new: 20 observations, 0.2 s → 10 ms.
    assert stage_means_ms(delta) == pytest.approx({"encode": 30.0, "fetch": 10.0})
    counters = {(c["name"], c["labels"].get("status")): c["value"] for c in delta["counters"]}
    assert counters == {("tandem_http_requests", "200"): 20.0, ("tandem_http_requests", "503"): 2.0}
    assert not any(h["name"].startswith("python_") for h in delta["histograms"])


def test_metrics_delta_since_start_and_unchanged_families_left_out() -> None:
    after = parse_prometheus(METRICS_AFTER)
    assert mean_batch_size(metrics_delta(None, after)) == pytest.approx(90.0 / 20.0)
    nothing = metrics_delta(after, after)
    assert nothing == {"histograms": [], "counters": []}
    assert mean_batch_size(nothing) is None
    assert mean_batch_size(None) is None
    assert stage_means_ms(None) == {}


def test_parse_prometheus_refuses_malformed_text() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the parser's own message varies
        parse_prometheus('tandem_x{le="1" 3\n')


# --------------------------------------------------------------------------- #
# Targets and the report
# --------------------------------------------------------------------------- #


def _runs(single_mean: float = 80.0, think_failures: int = 0, sat_rps: float = 120.0) -> dict[str, Any]:
    def entry(name: str, users: int, stats: dict[str, Any], think: list[float]) -> dict[str, Any]:
        history = [
            {"t": 0.0, "users": users, "rps": 0.0, "interval_rps": None, "p50_ms": None, "p95_ms": None},
            {"t": 1.0, "users": users, "rps": 10.0, "interval_rps": 12.0, "p50_ms": 50.0, "p95_ms": 90.0},
        ]
        return {
            "name": name,
            "title": {"single": "1 user, no think time", "think": "50 users, reference think time"}.get(
                name, "50 users, no think time (saturation)"
            ),
            "users": users,
            "spawn_rate": users,
            "think_s": think,
            "duration_s": 60,
            "stats": {"error_rate": stats["failures"] / stats["requests"], **stats},
            "errors": [{"method": "POST", "name": "/v1/recommendations", "error": "HTTP 503", "occurrences": 2}]
            if stats["failures"]
            else [],
            "history": history,
            "cpu": {"api": 1.5, "locust": 0.3, "image_server": 0.05, "other": 0.0},
            "api_threads": [{"thread": "tandem (100)", "cores": 0.6}, {"thread": "edge-search-0 (101)", "cores": 0.25}],
            "metrics": {
                "histograms": [{"name": "tandem_encoder_batch_size", "labels": {}, "count": 10, "sum": 50, "mean": 5}],
                "counters": [],
            },
        }

    return {
        "single": entry(
            "single", 1, {"requests": 300, "failures": 0, "mean_ms": single_mean, "p95_ms": 140.0, "rps": 10.0}, [0, 0]
        ),
        "think": entry(
            "think",
            50,
            {"requests": 2400, "failures": think_failures, "mean_ms": 150.0, "p95_ms": 300.0, "rps": 43.0},
            [0.5, 1.5],
        ),
        "saturation": entry(
            "saturation",
            50,
            {"requests": 7000, "failures": 0, "mean_ms": 400.0, "p95_ms": 650.0, "rps": sat_rps},
            [0, 0],
        ),
    }


def _verdicts(targets: list[dict[str, Any]]) -> dict[tuple[str, str], bool | None]:
    return {(t["run"], t["target"]): t["passed"] for t in targets}


def test_evaluate_targets_pass_and_miss() -> None:
    verdicts = _verdicts(evaluate_targets(_runs(think_failures=2), raw_images_per_s=200.0))
    assert verdicts[("single", "mean latency ≤ 100 ms")] is True
    assert verdicts[("single", "p95 latency ≤ 150 ms")] is True
    assert verdicts[("think", "throughput ≥ 40 req/s")] is True
    assert verdicts[("think", "p95 latency ≤ 500 ms")] is True
    assert verdicts[("think", "no failed request")] is False
    assert verdicts[("saturation", "p95 latency ≤ 500 ms")] is False
    assert verdicts[("saturation", "no failed request")] is True
    # 120 req/s against 200 images/s: 0.6 < 0.8.
    ratio = next(t for t in evaluate_targets(_runs(), 200.0) if t["target"].startswith("API throughput"))
    assert ratio["measured"] == pytest.approx(0.6)
    assert ratio["passed"] is False


def test_evaluate_targets_boundaries_and_missing_figures() -> None:
    at_limit = _verdicts(evaluate_targets(_runs(single_mean=100.0, sat_rps=160.0), raw_images_per_s=200.0))
    assert at_limit[("single", "mean latency ≤ 100 ms")] is True
    assert at_limit[("saturation", "API throughput ≥ 80% of the raw encoder's")] is True  # 160 / 200 = 0.8
    over = _verdicts(evaluate_targets(_runs(single_mean=100.5), raw_images_per_s=None))
    assert over[("single", "mean latency ≤ 100 ms")] is False
    assert over[("saturation", "API throughput ≥ 80% of the raw encoder's")] is None  # no raw figure
    runs = _runs()
    del runs["think"]
    missing = _verdicts(evaluate_targets(runs, 200.0))
    assert missing[("think", "throughput ≥ 40 req/s")] is None
    assert missing[("single", "p95 latency ≤ 150 ms")] is True


def _results(runs: dict[str, Any], raw_images_per_s: float = 200.0) -> dict[str, Any]:
    return {
        "generated_at": "2026-11-21T23:00:00+00:00",
        "machine": {"cpu": "Test CPU", "logical_cores": 2, "ram_gb": 8.0, "gpu": "none"},
        "config": {"ids": 500, "seed": 0, "top_k": 10, "think_s": [0.5, 1.5], "image_encoder": "open_clip:test"},
        "raw_encoder": {
            "model_id": "open_clip:test",
            "images": 500,
            "images_per_s": raw_images_per_s,
            "reference_batch": 32,
            "decode_images_per_s": 3000.0,
            "service_threads": 1,
            "service_threads_images_per_s": 150.0,
            "batches": [
                {"threads": 2, "batch_size": 32, "images_per_s": raw_images_per_s, "mean_ms": 160.0, "seconds": 10.0},
                {"threads": 2, "batch_size": 1, "images_per_s": 50.0, "mean_ms": 20.0, "batches": 250, "seconds": 5.0},
                {"threads": 1, "batch_size": 32, "images_per_s": 150.0, "mean_ms": 213.3, "seconds": 10.0},
                {"threads": 1, "batch_size": 1, "images_per_s": 45.0, "mean_ms": 22.2, "batches": 225, "seconds": 5.0},
            ],
        },
        "runs": runs,
        "api_to_raw_ratio": runs["saturation"]["stats"]["rps"] / raw_images_per_s,
        "targets": evaluate_targets(runs, raw_images_per_s),
    }


def test_write_report_marks_every_target(tmp_path: Path) -> None:
    results = _results(_runs(think_failures=2))
    paths = write_report(results, tmp_path, name="lt")
    assert set(paths) == {"json", "markdown", "png"}
    assert json.loads(paths["json"].read_text())["runs"]["think"]["stats"]["failures"] == 2
    assert paths["png"].stat().st_size > 0
    md = paths["markdown"].read_text()
    lines = md.splitlines()

    def target_line(target: str, run: str) -> str:
        return next(line for line in lines if line.startswith(f"| {target} | {run} |"))

    assert target_line("mean latency ≤ 100 ms", "1 user, no think time").endswith("| **PASS** |")
    assert target_line("no failed request", "50 users, reference think time").endswith("| **MISS** |")
    assert target_line("p95 latency ≤ 500 ms", "50 users, no think time (saturation)").endswith("| **MISS** |")
    assert "| 0.60× | **MISS** |" in target_line(
        "API throughput ≥ 80% of the raw encoder's", "50 users, no think time (saturation)"
    )
    # The reference beside our figures, the think-time assumption named, the errors listed.
    assert next(line for line in lines if line.startswith("| mean ms |")).startswith("| mean ms | 210.0 | 80.0 |")
    assert "Think time (an assumption)" in md
    assert "≈ 1.04 s" in md
    assert "| 50 users, reference think time | POST | /v1/recommendations | HTTP 503 | 2 |" in md
    assert (
        "- API at saturation / raw encoder on every core (batch 32): 120.0 req/s / 200.0 images/s = **0.60×** "
        "(target ≥ 0.80×)." in md
    )
    assert "on the service's thread count (batch 32): 120.0 req/s / 150.0 images/s = 0.80× (for reference)" in md
    assert "| 1 | 32 | 150.0 | 213.3 |" in md  # the raw encoder's table: threads, batch, images/s, ms
    assert "![latency and throughput over time](lt.png)" in md
    assert "Little's law check" in md
    assert "| 1 user, no think time | 0.85 | tandem (100) 0.60, edge-search-0 (101) 0.25 |" in md


def test_write_report_without_history_or_metrics(tmp_path: Path) -> None:
    runs = _runs()
    for r in runs.values():
        r["history"] = []
        r["metrics"] = None
        r["errors"] = []
    paths = write_report(_results(runs), tmp_path, name="lt")
    assert "png" not in paths
    md = paths["markdown"].read_text()
    assert "exposed no parsable `/metrics`" in md
    assert "## Errors\n\nNone." in md


# --------------------------------------------------------------------------- #
# The client (what the locustfile sends and checks)
# --------------------------------------------------------------------------- #


def test_parse_wait() -> None:
    assert parse_wait("0") == (0.0, 0.0)
    assert parse_wait("") == (0.0, 0.0)
    assert parse_wait(None) == (0.0, 0.0)
    assert parse_wait("1") == (1.0, 1.0)
    assert parse_wait(" 0.5-1.5 ") == (0.5, 1.5)
    for bad in ("fast", "2-1", "-1", "1-x", "nan"):
        with pytest.raises(ValueError, match="think time"):
            parse_wait(bad)


def test_build_payload_and_check_response() -> None:
    assert build_payload("http://127.0.0.1:9/", "a b", 5) == {"image_url": "http://127.0.0.1:9/a%20b.jpg", "top_k": 5}
    items = [{"product_id": str(i)} for i in range(10)]
    assert check_response(200, {"items": items}, 10) is None
    assert check_response(200, {"items": items[:3]}, 10) is None
    assert check_response(200, {"items": items}, 5) == "10 items for top_k=5"
    assert check_response(200, {"items": []}, 10) == "the answer has no item"
    assert check_response(200, {"results": items}, 10) == "the answer has no 'items' list"
    assert check_response(200, None, 10) == "the answer is not a JSON object"
    assert check_response(503, {"error": {"code": "overloaded"}}, 10) == "HTTP 503 (overloaded)"
    assert check_response(0, None, 10) == "HTTP 0"


def test_client_config_from_env(tmp_path: Path) -> None:
    ids = _write(tmp_path, "ids.txt", "11\n\n22\n")
    env = {ENV_IMAGE_BASE: "http://127.0.0.1:1", ENV_IDS_FILE: str(ids), ENV_KEY: "k", ENV_WAIT: "0", ENV_TOP_K: "3"}
    config = ClientConfig.from_env(env)
    assert config.ids == ["11", "22"]
    assert config.wait == (0.0, 0.0)
    assert config.summary_path is None
    import random

    urls = {config.payload(random.Random(seed))["image_url"] for seed in range(20)}
    assert urls == {"http://127.0.0.1:1/11.jpg", "http://127.0.0.1:1/22.jpg"}
    assert config.payload(random.Random(0))["top_k"] == 3
    with pytest.raises(ValueError, match=ENV_KEY):
        ClientConfig.from_env({k: v for k, v in env.items() if k != ENV_KEY})
    with pytest.raises(ValueError, match="lists no product id"):
        load_ids(_write(tmp_path, "empty.txt", "\n \n"))


def test_locustfile_wires_the_environment(tmp_path: Path) -> None:
    """Imported as Locust imports it (in a subprocess: locust monkey-patches the interpreter)."""
    ids = _write(tmp_path, "ids.txt", "7\n")
    probe = textwrap.dedent(
        f"""
        import importlib.util, json
        spec = importlib.util.spec_from_file_location("locustfile", {str(ROOT / "eval" / "locustfile.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        from locust import FastHttpUser
        user = module.RecommendationUser
        waits = [user.wait_time(None) for _ in range(500)]
        print(json.dumps({{"fast": issubclass(user, FastHttpUser), "min": min(waits), "max": max(waits),
                          "payload": module.CONFIG.payload(__import__("random").Random(0))}}))
        """
    )
    env = {**os.environ, ENV_IMAGE_BASE: "http://127.0.0.1:5", ENV_IDS_FILE: str(ids), ENV_KEY: "k"}
    env[ENV_WAIT] = "0.5-1.5"
    done = subprocess.run(
        [sys.executable, "-c", probe], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["fast"] is True
    assert 0.5 <= out["min"] < 0.7
    assert 1.3 < out["max"] <= 1.5
    assert out["payload"] == {"image_url": "http://127.0.0.1:5/7.jpg", "top_k": 10}


# --------------------------------------------------------------------------- #
# Small helpers: photos, the image server, the index check
# --------------------------------------------------------------------------- #


def test_pick_ids_is_a_seeded_sample_of_the_photos(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"{i}.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a photo")
    first = pick_ids(tmp_path, 5, seed=1)
    assert len(first) == 5
    assert first == pick_ids(tmp_path, 5, seed=1)
    assert set(first) <= {str(i) for i in range(20)}
    assert first != pick_ids(tmp_path, 5, seed=2)
    assert len(pick_ids(tmp_path, 100, seed=0)) == 20


def test_image_server_serves_the_folder(tmp_path: Path) -> None:
    photo = bytes(range(256)) * 10
    (tmp_path / "42.jpg").write_bytes(photo)
    port = free_port()
    code = "import sys; from eval.loadtest import serve_images; serve_images(sys.argv[1], int(sys.argv[2]))"
    server = Service("image_server", [sys.executable, "-c", code, str(tmp_path), str(port)], tmp_path / "log")
    try:
        wait_http(f"http://127.0.0.1:{port}/42.jpg", server, 30)
        with httpx.Client() as client:  # two requests on one kept-alive connection
            first = client.get(f"http://127.0.0.1:{port}/42.jpg")
            second = client.get(f"http://127.0.0.1:{port}/missing.jpg")
        assert first.content == photo
        assert second.status_code == 404
    finally:
        server.stop()
    assert not server.alive()


def test_wait_for_quiet_returns_after_its_deadline() -> None:
    t0 = time.perf_counter()
    quiet = wait_for_quiet(0.0, threshold_cores=-1.0, window_s=0.2)  # never quiet enough: the deadline ends it
    assert time.perf_counter() - t0 < 2.0
    assert quiet["waited_s"] >= 0.2
    assert quiet["other_cores"] >= 0.0


def test_index_and_tower_checks(tmp_path: Path) -> None:
    from api.settings import Settings

    settings = Settings(home=tmp_path)
    assert index_missing(settings) is True
    assert tower_missing(settings) is True
    settings.qdrant_dir.mkdir(parents=True)
    (settings.qdrant_dir / "tandem_manifest.json").write_text("{}")
    settings.tower_dir.mkdir(parents=True)
    (settings.tower_dir / "open_clip_config.json").write_text("{}")
    assert index_missing(settings) is False
    assert tower_missing(settings) is False
    remote = Settings(
        home=tmp_path / "other", qdrant={"url": "http://qdrant:6333"}, encoders={"image_model": "ViT-B-32"}
    )
    assert index_missing(remote) is False  # a server's index is not checked here
    assert tower_missing(remote) is False  # another encoder is configured


# --------------------------------------------------------------------------- #
# The whole load test
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_run_against_a_stand_in_service(tandem_env: Path, fashion_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every moving part but the real API: photos, image server, raw encoder, three Locust runs, metrics, report."""
    from api.components import build_image_encoder
    from api.settings import get_settings

    monkeypatch.setenv("TANDEM_CATALOGUE__PATH", str(fashion_dir))
    monkeypatch.setenv("FAKE_API_FAIL_EVERY", "25")  # every 25th request answers 502
    get_settings.cache_clear()
    config = LoadtestConfig.quick_config(
        ids=50,
        single_s=3,
        duration_s=4,
        users=10,
        raw_s=0.5,
        prepare_index=False,
        api_argv=(sys.executable, str(FAKE_API), "{port}"),
    )
    settings = get_settings()
    results = run(
        settings, config, build_encoder=lambda: build_image_encoder(settings), reports_dir=tandem_env / "reports"
    )

    runs = results["runs"]
    assert list(runs) == ["single", "think", "saturation"]
    for r in runs.values():
        assert r["stats"]["requests"] > 0
        assert r["history"], r["name"]
        assert set(r["cpu"]) >= {"api", "locust", "image_server", "other"}
        assert r["api_threads"], r["name"]  # the stand-in's threads were sampled
        assert all(t["cores"] >= 0 for t in r["api_threads"])
    assert runs["think"]["users"] == 10
    assert runs["think"]["think_s"] == [0.5, 1.5]
    sat = runs["saturation"]
    assert sat["stats"]["failures"] > 0
    assert sat["errors"][0]["error"] == "HTTP 502 (upstream)"
    assert sat["stats"]["mean_ms"] is not None
    assert mean_batch_size(sat["metrics"]) == pytest.approx(2.0)  # what the stand-in reports
    assert results["raw_encoder"]["images_per_s"] > 0
    raw = results["raw_encoder"]
    cores = os.cpu_count() or 1
    expected = {(threads, bs) for threads in {cores, raw["service_threads"]} for bs in (32, 1)}
    assert {(b["threads"], b["batch_size"]) for b in raw["batches"]} == expected
    assert raw["images_per_s"] == next(
        b["images_per_s"] for b in raw["batches"] if (b["threads"], b["batch_size"]) == (cores, 32)
    )
    verdicts = _verdicts(results["targets"])
    assert verdicts[("saturation", "no failed request")] is False
    md = Path(results["report"]["markdown"]).read_text()
    assert "Quick mode" in md
    assert "HTTP 502 (upstream)" in md
    assert Path(results["report"]["png"]).is_file()


@pytest.mark.slow
def test_quick_load_test_of_tandem_serve(tandem_env: Path, small_catalogue_dir: Path, tmp_path: Path) -> None:
    """``tandem bench loadtest --quick`` end to end: index built, API served, Locust runs, report written."""
    env = {**os.environ, "TANDEM_CATALOGUE__PATH": str(small_catalogue_dir)}
    reports = tmp_path / "reports"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli.main",
            "bench",
            "loadtest",
            "--quick",
            "--reports",
            str(reports),
            "--users",
            "20",
        ],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((reports / "api_loadtest.json").read_text())
    assert (reports / "api_loadtest.md").is_file()
    assert results["notes"] and "tandem demo" in results["notes"][0]  # the index was built first
    runs = results["runs"]
    for r in runs.values():
        assert r["stats"]["requests"] > 0, r["name"]
    # A correct service answers every request of a single user.
    assert runs["single"]["stats"]["failures"] == 0, runs["single"]["errors"]
    assert all(isinstance(t["passed"], bool) for t in results["targets"])
    assert results["raw_encoder"]["images_per_s"] > 0
    batch = mean_batch_size(runs["saturation"]["metrics"])
    assert batch is None or batch >= 1.0
