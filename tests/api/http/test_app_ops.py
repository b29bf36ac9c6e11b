"""Operations: probes, metrics, OpenAPI, request ids, JSON logs, not-ready behaviour."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

URL = "/v1/recommendations"


def test_healthz_and_readyz(client: Any, small_catalogue_dir: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    detail = r.json()["detail"]
    rows = len((small_catalogue_dir / "products.csv").read_text().splitlines()) - 1
    assert r.json()["ready"] is True and detail["products"] == rows
    assert r.json()["parts"] == {"retrieval": True, "llm": False}  # no LLM worker configured: REST needs none
    assert detail["image_encoder"].startswith("open_clip:")


def test_not_ready_without_an_index(settings_factory: Any, tmp_path: Any, shared_encoders: None) -> None:
    from fastapi.testclient import TestClient

    from api.http.app import create_app
    from tests.api.conftest import API_KEY

    settings = settings_factory()
    settings = settings.model_copy(update={"home": tmp_path / "empty"})
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert r.json()["parts"]["retrieval"] is False
        assert "tandem index" in r.json()["detail"]["reason"]
        r = c.post(URL, json={"text": "bag"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert c.get("/healthz").status_code == 200


def _samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_metrics_count_requests_stages_and_batches(client: Any) -> None:
    client.post(URL, json={"text": "belt", "top_k": 2})
    client.post(URL, json={"text": "belt", "colour": "x"})
    text = client.get("/metrics").text
    requests = _samples(text, "tandem_http_requests_total")
    ok = requests['tandem_http_requests_total{method="POST",route="/v1/recommendations",status="200"}']
    bad = requests['tandem_http_requests_total{method="POST",route="/v1/recommendations",status="422"}']
    assert ok >= 1 and bad >= 1
    assert 'tandem_http_request_duration_seconds_bucket{le="0.1",method="POST"' in text
    for stage in ("fetch", "encode", "search", "total"):
        assert (
            _samples(text, "tandem_stage_duration_seconds_count")[
                f'tandem_stage_duration_seconds_count{{stage="{stage}"}}'
            ]
            >= ok
        )
    batches = _samples(text, "tandem_encoder_batch_size")
    assert batches["tandem_encoder_batch_size_count"] >= 1
    assert "tandem_http_in_flight" in text
    assert "tandem_circuit_breaker_state" in text


def test_unknown_paths_share_one_metrics_label(client: Any) -> None:
    client.get("/no/such/path/1")
    client.get("/no/such/path/2")
    text = client.get("/metrics").text
    assert "/no/such/path" not in text
    assert 'route="unmatched"' in text


def test_openapi_documents_the_contract(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/recommendations"]["post"]
    assert {"200", "400", "401", "413", "415", "422", "429", "504"} <= set(post["responses"])
    assert post["security"] == [{"APIKeyHeader": []}]
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    schemas = spec["components"]["schemas"]
    request = schemas["RecommendRequest"]
    assert request["additionalProperties"] is False
    assert request["examples"] and {"image_url", "image_path", "image_base64", "text", "top_k"} <= set(
        request["properties"]
    )
    assert {"product_id", "name", "category", "score", "image_url"} <= set(schemas["RecommendedItem"]["properties"])
    assert "/v1/recommendations/upload" in spec["paths"]


def test_request_id_is_taken_from_the_caller_or_made(client: Any) -> None:
    r = client.post(URL, json={"text": "cap"}, headers={"X-Request-ID": "legacy-42.abc"})
    assert r.headers["x-request-id"] == "legacy-42.abc" and r.json()["request_id"] == "legacy-42.abc"
    r = client.post(URL, json={"text": "cap"}, headers={"X-Request-ID": "bad id with spaces\t"})
    assert r.headers["x-request-id"] != "bad id with spaces\t" and len(r.headers["x-request-id"]) == 32


def test_logs_are_json_with_the_request_id() -> None:
    from api.logs import LOGGERS, configure_logging, request_id_var

    saved = {n: (logging.getLogger(n).handlers, logging.getLogger(n).propagate) for n in LOGGERS}
    stream = io.StringIO()
    configure_logging("INFO", stream)
    token = request_id_var.set("rid-1")
    try:
        logging.getLogger("tandem.api.access").info("request", extra={"status": 200, "duration_ms": 1.5})
        logging.getLogger("uvicorn.error").info("started", extra={"color_message": "\x1b[36mstarted"})
    finally:
        request_id_var.reset(token)
        for name, (handlers, propagate) in saved.items():
            logging.getLogger(name).handlers, logging.getLogger(name).propagate = handlers, propagate
    first, second = stream.getvalue().strip().splitlines()
    assert "color_message" not in json.loads(second)
    line = first
    record = json.loads(line)
    assert record["message"] == "request" and record["request_id"] == "rid-1"
    assert record["status"] == 200 and record["level"] == "INFO" and "time" in record
