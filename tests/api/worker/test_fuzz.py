"""The embedded worker keeps the contract its OpenAPI document publishes (Schemathesis, a short derandomized run)."""

from __future__ import annotations

from api.cli.fuzz import worker_target
from eval.fuzz import run_fuzz


def test_every_worker_operation_keeps_the_published_contract() -> None:
    report = run_fuzz([worker_target()], examples=10)

    details = "\n".join(
        f"{f['operation']}: {f['failure']} (HTTP {f['status']})\n{f['detail']}" for f in report["failures"]
    )
    assert report["server_errors"] == 0 and report["failures"] == [], details
    operations = {row["operation"]: row for row in report["per_operation"]}
    assert set(operations) == {"GET /health", "GET /metrics", "GET /v1/models", "POST /v1/chat/completions"}
    assert operations["POST /v1/chat/completions"]["positive_accepted"] > 0
