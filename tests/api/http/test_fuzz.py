"""The API keeps the contract its OpenAPI document publishes, fuzzed by Schemathesis (a short, derandomized run).

``tandem bench fuzz`` is the long run; this one runs every operation with the document's examples and a
few generated requests, valid and invalid, and fails on any 5xx, undocumented status or content type, or
a body that does not match its documented schema.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import API_KEY

# Operations whose schema-valid requests are served when nothing depends on data the fuzzer cannot know.
SERVED = ["POST /v1/recommendations", "POST /v1/chat", "POST /v1/llm/workers", "POST /v1/llm/chat/completions"]


def _explain(report: dict[str, Any]) -> str:
    return "\n".join(
        f"{f['operation']}: {f['failure']} (HTTP {f['status']})\n{f['detail']}" for f in report["failures"]
    )


def test_every_operation_keeps_the_published_contract(
    settings_factory: Callable[..., Any], shared_encoders: None
) -> None:
    from api.cli.fuzz import api_target
    from eval.fuzz import run_fuzz

    report = run_fuzz([api_target(settings_factory(), key=API_KEY)], examples=5)

    assert report["server_errors"] == 0, _explain(report)
    assert report["failures"] == [], _explain(report)
    operations = {row["operation"]: row for row in report["per_operation"]}
    assert len(operations) == report["operations"] == 10
    # The published constraints are the real ones: data the schema allows is served, not refused.
    for label in SERVED:
        assert operations[label]["positive_accepted"] > 0, (label, operations[label]["rejections"])


def test_s3_path_without_s3_storage_is_the_clients_400(
    settings_factory: Callable[..., Any], shared_encoders: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenAPI example that found it: an s3:// path on a service with no S3 storage configured (was a 502)."""
    from fastapi.testclient import TestClient

    from api.http.app import create_app

    # No AWS credentials anywhere in the default chain either (environment, files, instance role).
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with TestClient(create_app(settings_factory()), headers={"X-API-Key": API_KEY}) as c:
        body = {"image_path": "s3://buyer-photos/2024/06/123.jpg", "text": "same style in red"}
        first, again = c.post("/v1/recommendations", json=body), c.post("/v1/recommendations", json=body)
    assert first.status_code == again.status_code == 400, first.text
    error = first.json()["error"]
    assert error["code"] == "path_not_allowed"
    assert "needs S3 storage" in error["message"] and "TANDEM_STORAGE__S3_ENDPOINT_URL" in error["message"]
