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
