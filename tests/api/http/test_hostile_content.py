"""Hostile images through the HTTP API: a clear 4xx or an answer, never a 500, within a memory bound.

The same table as ``tests/retrieval/test_hostile_images.py`` (``tests/support/hostile_images.py``),
sent as ``image_base64`` to ``POST /v1/recommendations`` and as a multipart upload, to a service
configured with that table's limits. ``test_app_safety.py`` keeps the basic cases (not base64,
not an image, truncated, oversize, the 90-megapixel photo).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from retrieval.errors import ImageError, ImageTooLargeError, UnsupportedImageError
from tests.api.conftest import API_KEY, jpeg_bytes
from tests.support.hostile_images import (
    LIMITS,
    HostileCase,
    can_measure_peak,
    hostile_cases,
    memory_bound,
    peak_rss_growth,
)

URL = "/v1/recommendations"
CASES = hostile_cases()

# The JSON body holds the bytes as base64 (4/3), parsed to a str (4/3 again), decoded (1): a few copies.
_HTTP_COPIES = 8
# Request handling around the decode (parsing, the encoder's forward pass on one photo, the response).
_HTTP_SLACK = 24 * 2**20


def _expected(case: HostileCase) -> tuple[int, str | None]:
    if case.refused is None:
        return 200, None
    if issubclass(case.refused, ImageTooLargeError):
        return 413, "image_too_large"
    if issubclass(case.refused, UnsupportedImageError):
        return 415, "unsupported_image"
    assert issubclass(case.refused, ImageError)
    return 400, "invalid_image"


@pytest.fixture(scope="module")
def hostile_client(settings_factory: Callable[..., Any], shared_encoders: None) -> Iterator[Any]:
    """The service with the hostile table's image limits (1 megapixel, 4 MiB)."""
    from fastapi.testclient import TestClient

    from api.http.app import create_app

    images = {"max_bytes": LIMITS.max_bytes, "max_pixels": LIMITS.max_pixels, "hard_max_pixels": LIMITS.hard_max_pixels}
    with TestClient(create_app(settings_factory(images=images)), headers={"X-API-Key": API_KEY}) as client:
        # Warm up: the first request builds what every later one reuses (thread pools, caches).
        warm = base64.b64encode(jpeg_bytes()).decode()
        assert client.post(URL, json={"image_base64": warm}).status_code == 200
        yield client


def _check(response: Any, case: HostileCase) -> None:
    status, code = _expected(case)
    assert response.status_code == status, f"{case.id}: {response.status_code} {response.text[:300]}"
    body = response.json()
    if code is None:
        assert len(body["items"]) == 10
        return
    assert body["error"]["code"] == code
    message = body["error"]["message"]
    assert message and "Traceback" not in message
    assert response.headers["x-request-id"] == body["error"]["request_id"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_image_as_base64_gets_a_clear_answer(hostile_client: Any, case: HostileCase) -> None:
    data = case.make()
    _check(hostile_client.post(URL, json={"image_base64": base64.b64encode(data).decode()}), case)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_image_as_upload_gets_a_clear_answer(hostile_client: Any, case: HostileCase) -> None:
    data = case.make()
    # The declared type is the attacker's to choose: claim a JPEG whatever the bytes are.
    response = hostile_client.post(f"{URL}/upload", files={"file": ("photo.jpg", data, "image/jpeg")})
    _check(response, case)


def test_svg_declared_as_svg_is_415(hostile_client: Any) -> None:
    svg = next(c for c in CASES if c.id == "svg-with-script").make()
    response = hostile_client.post(f"{URL}/upload", files={"file": ("x.svg", svg, "image/svg+xml")})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_image"
    data_url = "data:image/svg+xml;base64," + base64.b64encode(svg).decode()
    assert hostile_client.post(URL, json={"image_base64": data_url}).status_code == 415


@pytest.mark.skipif(not can_measure_peak(), reason="this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_hostile_upload_stays_within_the_memory_bound(hostile_client: Any, case: HostileCase) -> None:
    data = case.make()
    files = {"file": ("photo.jpg", data, "image/jpeg")}
    response, grown = peak_rss_growth(lambda: hostile_client.post(f"{URL}/upload", files=files))
    _check(response, case)
    bound = memory_bound(LIMITS, data, copies_of_input=_HTTP_COPIES) + _HTTP_SLACK
    assert grown <= bound, (
        f"peak RSS grew {grown / 2**20:.1f} MiB serving {case.id}; the bound is {bound / 2**20:.1f} MiB"
    )
    assert hostile_client.get("/healthz").status_code == 200
