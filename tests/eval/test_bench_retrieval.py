"""Tests for eval.bench_retrieval: the synthetic vector benchmark at toy scale, the report, the machine info."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eval.bench_retrieval import bench_vector_search, write_report
from eval.machine import machine_info


def test_bench_vector_search_small(tmp_path: Path) -> None:
    rows = bench_vector_search(sizes=(2000,), dim=32, queries=20, k=10, work_dir=tmp_path)
    assert len(rows) == 1
    row = rows[0]
    for key in (
        "n",
        "dim",
        "edge_p50_ms",
        "edge_p95_ms",
        "numpy_p50_ms",
        "numpy_p95_ms",
        "speedup_p50",
        "edge_recall@10",
        "edge_build_s",
        "synthetic",
    ):
        assert key in row, key
    assert row["n"] == 2000
    assert row["dim"] == 32
    assert row["synthetic"] is True
    assert 0.0 <= row["edge_recall@10"] <= 1.0
    assert row["edge_recall@10"] >= 0.9
    for key in ("edge_p50_ms", "edge_p95_ms", "numpy_p50_ms", "numpy_p95_ms", "speedup_p50"):
        assert row[key] > 0, key
    assert row["edge_p95_ms"] >= row["edge_p50_ms"]
    assert row["numpy_p95_ms"] >= row["numpy_p50_ms"]
    assert row["edge_build_s"] >= 0
    # HNSW really was built (the indexing threshold is lowered for small sizes).
    assert row["edge_indexed_vectors"] == 2000
    assert [s["hnsw_ef"] for s in row["ef_sweep"]] == [64, 128, 256]
    for s in row["ef_sweep"]:
        assert 0.0 <= s["recall@10"] <= 1.0
        assert s["p50_ms"] > 0
    # The shard is removed once measured.
    assert not (tmp_path / "edge-2000").exists()


def test_bench_vector_search_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exceed k"):
        bench_vector_search(sizes=(5,), dim=8, queries=2, k=10, work_dir=tmp_path)
    with pytest.raises(ValueError, match="positive"):
        bench_vector_search(sizes=(100,), dim=0, work_dir=tmp_path)


def _results() -> dict[str, Any]:
    stats = {"p50_ms": 12.5, "p95_ms": 20.0, "mean_ms": 13.1, "n": 200}
    return {
        "generated_at": "2025-01-01T00:00:00+00:00",
        "machine": {"cpu": "Test CPU", "logical_cores": 2, "ram_gb": 24.0, "gpu": "none"},
        "catalogue": {
            "catalogue": "/data/fashion",
            "products": 1000,
            "failed": 0,
            "index_seconds": 42.0,
            "images_per_s": 50.0,
            "texts_per_s": 200.0,
            "text_encoder": "sentence-transformers:all-MiniLM-L6-v2",
            "image_encoder": "open_clip:tower@abc",
            "device": "cpu",
            "k": 10,
            "text_query": stats,
            "image_query": stats,
            "search_only": {"p50_ms": 0.8, "p95_ms": 1.2, "mean_ms": 0.9, "n": 400},
        },
        "vector_search": [
            {
                "n": n,
                "dim": 384,
                "edge_p50_ms": 0.5 * i + 0.5,
                "edge_p95_ms": 0.7 * i + 0.7,
                "numpy_p50_ms": 2.0 * 10**i,
                "numpy_p95_ms": 2.5 * 10**i,
                "speedup_p50": 4.0 * 10**i / (i + 1),
                "edge_recall@10": 0.99,
                "edge_build_s": 1.5 * 10**i,
                "synthetic": True,
            }
            for i, n in enumerate((10_000, 100_000, 1_000_000))
        ],
        "notes": ["a hand-made result"],
    }


def test_write_report(tmp_path: Path) -> None:
    results = _results()
    json_path, md_path = write_report(results, tmp_path / "reports", name="bench")
    assert json_path == tmp_path / "reports" / "bench.json"
    assert md_path == tmp_path / "reports" / "bench.md"
    assert json.loads(json_path.read_text()) == results
    md = md_path.read_text()
    assert "synthetic" in md.lower()
    assert "| 1,000,000 |" in md
    assert "Test CPU" in md
    assert "a hand-made result" in md
    png = tmp_path / "reports" / "bench.png"
    assert png.is_file()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_without_runs(tmp_path: Path) -> None:
    results: dict[str, Any] = {"machine": {"cpu": "x"}, "catalogue": None, "vector_search": []}
    json_path, md_path = write_report(results, tmp_path)
    assert json.loads(json_path.read_text()) == results
    assert "Not run." in md_path.read_text()
    assert not (tmp_path / "retrieval_bench.png").exists()


def test_machine_info() -> None:
    info = machine_info()
    assert isinstance(info["logical_cores"], int)
    assert info["logical_cores"] >= 1
    assert info["ram_gb"] > 0
    for key in ("cpu", "python", "torch", "qdrant_edge_py", "numpy", "platform", "gpu"):
        assert isinstance(info[key], str)
        assert info[key]
