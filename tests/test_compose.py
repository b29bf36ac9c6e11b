"""compose.yaml cannot run here (no Docker engine): parse it and check the wiring instead."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "compose.yaml"


def test_compose_wiring() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    qdrant = services["qdrant"]
    assert "6333:6333" in qdrant["ports"]
    assert "healthcheck" in qdrant
    indexer = services["indexer"]
    env = indexer["environment"]
    assert env["TANDEM_QDRANT__URL"] == "http://qdrant:6333"
    assert env["TANDEM_QDRANT__API_KEY"].startswith("${QDRANT_API_KEY:?")
    assert indexer["depends_on"]["qdrant"]["condition"] == "service_healthy"
    for volume in (v.split(":")[0] for s in services.values() for v in s.get("volumes", [])):
        assert volume.startswith("${") or volume in doc["volumes"]


def test_compose_api_service() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    api = services["api"]
    assert api["command"][:2] == ["serve", "--prepare"] and "0.0.0.0" in api["command"]
    env = api["environment"]
    # Listening beyond loopback needs keys: compose refuses to start without them.
    assert env["TANDEM_API__KEYS"].startswith("${TANDEM_API_KEYS:?")
    assert env["TANDEM_QDRANT__URL"] == "http://qdrant:6333"
    assert env["TANDEM_STORAGE__S3_ENDPOINT_URL"] == "http://minio:9000"
    assert {"qdrant", "minio"} <= set(api["depends_on"])
    assert all(dep["condition"] == "service_healthy" for dep in api["depends_on"].values())
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert "8000:8000" in api["ports"]
    # Every ${VAR:?...} names what to set.
    for service in services.values():
        for value in (service.get("environment") or {}).values():
            if ":?" in str(value):
                assert str(value).split(":?", 1)[1].rstrip("}").strip()
