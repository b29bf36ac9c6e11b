"""reliability.json holds the issue's keys, read from each benchmark's own report; a part not run is null."""

from __future__ import annotations

import json
from pathlib import Path

from eval.reliability import write_reliability


def test_reliability_gathers_the_three_reports(tmp_path: Path) -> None:
    soak = {"minutes": 30.0, "rss_growth": 0.074712, "errors": 0, "p99_ms_first_minute": 10.25,
            "p99_ms_last_minute": 14.5, "requests": 9}  # fmt: skip
    (tmp_path / "soak.json").write_text(json.dumps({"summary": soak, "machine": {"cpu": "x", "logical_cores": 2}}))
    (tmp_path / "fuzz.json").write_text(json.dumps({"operations": 14, "examples": 3918, "server_errors": 0}))
    body = write_reliability(tmp_path)
    on_disk = json.loads((tmp_path / "reliability.json").read_text())
    assert on_disk == body
    assert on_disk["soak"] == {"minutes": 30.0, "rss_growth": 0.0747, "errors": 0, "p99_ms_first_minute": 10.25,
                               "p99_ms_last_minute": 14.5}  # fmt: skip
    assert on_disk["fuzz"] == {"operations": 14, "examples": 3918, "server_errors": 0}
    assert on_disk["fairness"] is None
    md = (tmp_path / "reliability.md").read_text()
    assert "3918 generated requests, **0** server errors" in md and "Not run yet: `tandem bench fairness`" in md
