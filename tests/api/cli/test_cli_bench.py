"""`tandem bench` end to end in a tiny configuration: every report file is written and holds the labelled figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import run_cli


def test_bench_tiny(
    tandem_env: Path, tmp_path: Path, small_catalogue_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    from api.settings import get_settings

    monkeypatch.setenv("TANDEM_CATALOGUE__PATH", str(small_catalogue_dir))
    get_settings.cache_clear()
    reports = tmp_path / "reports"
    code, out, err = run_cli(
        [
            "bench",
            "--reports",
            str(reports),
            "--limit",
            "40",
            "--vector-sizes",
            "1500",
            "--hier-sizes",
            "600",
            "--queries",
            "5",
            "--eval-queries",
            "5",
        ],
        capsys,
    )
    assert code == 0, err
    retrieval = json.loads((reports / "retrieval_bench.json").read_text())
    assert retrieval["catalogue"]["products"] == 40
    assert retrieval["vector_search"][0]["n"] == 1500 and retrieval["vector_search"][0]["synthetic"] is True
    hier = json.loads((reports / "hierarchical_bench.json").read_text())
    (row,) = hier["scaling"]
    assert row["n"] == 600 and row["synthetic"] is True and row["categories"] > 100
    assert not (reports / "hierarchical_eval.json").exists()  # no main index here: the real eval is skipped
    assert "no index yet" in out
    md = (reports / "hierarchical_bench.md").read_text()
    assert "SYNTHETIC" in md and (reports / "hierarchical_bench.png").stat().st_size > 1000
    assert (reports / "retrieval_bench.png").is_file()


def test_bench_bad_sizes(tandem_env: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run_cli(["bench", "--only", "scaling", "--hier-sizes", "12,x"], capsys)
    assert code == 1 and "comma-separated integers" in err
