"""Bad input gets a clear 4xx and the service stays up: keys, schema, images, SSRF, paths, body limits."""

from __future__ import annotations

import base64
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import API_KEY, ImageServer, jpeg_bytes

URL = "/v1/recommendations"


def _error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert err["code"] == code
    assert err["message"] and "Traceback" not in err["message"]
    assert err["request_id"] == r.headers["x-request-id"]
    return err


# -- keys ------------------------------------------------------------------------------------------


def test_missing_and_wrong_api_keys_are_401(client: Any) -> None:
    r = client.post(URL, json={"text": "bag"}, headers={"X-API-Key": ""})
    _error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "ApiKey"
    _error(client.post(URL, json={"text": "bag"}, headers={"X-API-Key": "nope"}), 401, "unauthorized")
    assert client.post(URL, json={"text": "bag"}, headers={"X-API-Key": API_KEY}).status_code == 200


def test_probes_need_no_key(client: Any) -> None:
    assert client.get("/healthz", headers={"X-API-Key": ""}).status_code == 200
    assert client.get("/readyz", headers={"X-API-Key": ""}).status_code == 200


@pytest.fixture(scope="module")
def keyless_app(settings_factory: Any, shared_encoders: None) -> Any:
    from api.http.app import create_app

    return create_app(settings_factory(api={"keys": []}))


def test_without_keys_only_loopback_clients_are_served(keyless_app: Any) -> None:
    from fastapi.testclient import TestClient

    with TestClient(keyless_app, client=("203.0.113.9", 5000)) as remote:
        _error(remote.post(URL, json={"text": "bag"}), 401, "unauthorized")
    with TestClient(keyless_app, client=("127.0.0.1", 5000)) as local:
        assert local.post(URL, json={"text": "bag"}).status_code == 200
        # No allow-list here: a loopback image URL is an SSRF attempt.
        for url in ("http://127.0.0.1:9/x.jpg", "http://localhost:9/x.jpg"):
            _error(local.post(URL, json={"image_url": url}), 400, "url_not_allowed")


def test_serve_binds_loopback_without_keys(settings_factory: Any) -> None:
    from api.http.server import effective_host

    host, notice = effective_host(settings_factory(api={"keys": []}), "0.0.0.0")
    assert host == "127.0.0.1" and notice and "TANDEM_API__KEYS" in notice
    assert effective_host(settings_factory(), "0.0.0.0") == ("0.0.0.0", None)


# -- schema ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"text": "bag", "colour": "red"}, "colour"),
        ({"top_k": 5}, "image"),
        ({"text": "   "}, "image"),
        ({"image_url": "https://a.example/x.jpg", "image_path": "x.jpg"}, "one image source"),
        ({"text": "bag", "top_k": 0}, "top_k"),
        ({"text": "bag", "top_k": 1000}, "top_k"),
        ({"text": "bag", "mode": "fuzzy"}, "mode"),
        ({"text": "bag", "filters": {"category": "x"}}, "category"),
    ],
)
def test_schema_violations_are_422(client: Any, body: dict[str, Any], needle: str) -> None:
    err = _error(client.post(URL, json=body), 422, "invalid_request")
    assert needle in err["message"]


def test_malformed_json_is_422(client: Any) -> None:
    r = client.post(URL, content=b'{"text": ', headers={"content-type": "application/json"})
    _error(r, 422, "invalid_request")


def test_unknown_route_and_method_have_the_error_shape(client: Any) -> None:
    _error(client.get("/v1/nothing"), 404, "not_found")
    _error(client.get(URL), 405, "method_not_allowed")


# -- images ----------------------------------------------------------------------------------------


def test_invalid_base64_is_400(client: Any) -> None:
    _error(client.post(URL, json={"image_base64": "not base64 !!"}), 400, "bad_request")


def test_non_image_is_415(client: Any) -> None:
    data = base64.b64encode(b"%PDF-1.7 this is not a photo" * 10).decode()
    _error(client.post(URL, json={"image_base64": data}), 415, "unsupported_image")
    r = client.post(f"{URL}/upload", files={"file": ("a.txt", b"hello", "text/plain")})
    _error(r, 415, "unsupported_image")


def test_truncated_jpeg_is_400(client: Any) -> None:
    data = jpeg_bytes((400, 300))
    truncated = base64.b64encode(data[: len(data) // 2]).decode()
    err = _error(client.post(URL, json={"image_base64": truncated}), 400, "invalid_image")
    assert "truncated" in err["message"] or "corrupt" in err["message"]


def test_oversize_image_is_413(client: Any) -> None:
    limit = client.app.state.settings.images.max_bytes
    big = base64.b64encode(b"\xff" * (limit + 10)).decode()
    r = client.post(URL, json={"image_base64": big})
    assert r.status_code == 413
    assert r.json()["error"]["code"] in ("image_too_large", "payload_too_large")
    r = client.post(f"{URL}/upload", files={"file": ("big.jpg", b"\xff" * (limit + 10), "image/jpeg")})
    assert r.status_code == 413


def test_body_over_the_cap_is_413_even_when_chunked(client: Any) -> None:
    limit = client.app.state.settings.images.max_bytes

    def chunks() -> Iterator[bytes]:
        yield b'{"image_base64": "'
        for _ in range(limit * 2 // 65536):
            yield b"A" * 65536
        yield b'"}'

    r = client.post(URL, content=chunks(), headers={"content-type": "application/json"})
    _error(r, 413, "payload_too_large")
    r = client.post(URL, content=b"x" * (limit * 2), headers={"content-type": "application/json"})
    _error(r, 413, "payload_too_large")
    assert client.get("/healthz").status_code == 200


def _make_huge(tmp_path: Path, fmt: str) -> Path:
    """A 90-megapixel photo, made in a child process so this process never holds its pixels."""
    out = tmp_path / f"huge.{fmt.lower()}"
    code = (
        "from PIL import Image; import sys;"
        f"Image.new('RGB', (10000, 9000), (150, 40, 40)).save(sys.argv[1], format='{fmt}')"
    )
    subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    return out


def test_90_megapixel_photo_is_shrunk_or_refused_with_bounded_memory(client: Any, tmp_path: Path) -> None:
    jpeg = _make_huge(tmp_path, "JPEG")
    png = _make_huge(tmp_path, "PNG")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    r = client.post(f"{URL}/upload", files={"file": ("huge.jpg", jpeg.read_bytes(), "image/jpeg")})
    # A JPEG is decoded at 1/8 scale (DCT draft): it is answered, not refused.
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 10
    # A PNG cannot be decoded reduced: over the pixel limit it is refused.
    err = _error(
        client.post(f"{URL}/upload", files={"file": ("huge.png", png.read_bytes(), "image/png")}),
        413,
        "image_too_large",
    )
    assert "pixels" in err["message"]
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 150, f"peak memory grew by {grown_mib:.0f} MiB (a full decode is 257 MiB)"
    assert client.get("/healthz").status_code == 200


# -- SSRF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2/x.jpg",  # loopback not on the allow-list (only 127.0.0.1 is)
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://10.0.0.1/x.jpg",
        "http://192.168.1.10/x.jpg",
        "http://100.64.0.1/x.jpg",  # carrier-grade NAT
        "http://[::1]/x.jpg",
        "http://[::ffff:169.254.169.254]/x.jpg",  # IPv4-mapped IPv6
        "http://0.0.0.0/x.jpg",
        "file:///etc/passwd",
        "ftp://example.com/x.jpg",
        "gopher://127.0.0.1:6379/_INFO",
    ],
)
def test_ssrf_targets_are_refused(client: Any, url: str) -> None:
    _error(client.post(URL, json={"image_url": url}), 400, "url_not_allowed")


def test_redirect_to_a_forbidden_address_is_refused(client: Any, image_server: ImageServer) -> None:
    for target in ("http://127.0.0.2/x.jpg", "http://169.254.169.254/latest/meta-data/", "http://10.1.1.1/"):
        r = client.post(URL, json={"image_url": image_server.url(f"/redirect?to={target}")})
        _error(r, 400, "url_not_allowed")


def test_host_names_are_checked_after_dns(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def rebinding_dns(host: str, port: int) -> list[str]:
        return {"evil.example": ["93.184.216.34", "10.0.0.7"], "meta.example": ["169.254.169.254"]}[host]

    monkeypatch.setattr(client.app.state.resources.fetcher.policy, "resolver", rebinding_dns)
    for host in ("evil.example", "meta.example"):
        err = _error(client.post(URL, json={"image_url": f"http://{host}/x.jpg"}), 400, "url_not_allowed")
        assert host in err["message"]


def test_unresolvable_host_is_400(client: Any) -> None:
    _error(client.post(URL, json={"image_url": "http://no-such-host.invalid/x.jpg"}), 400, "image_unavailable")


def test_origin_errors(client: Any, image_server: ImageServer) -> None:
    _error(client.post(URL, json={"image_url": image_server.url("/missing.jpg")}), 400, "image_not_found")
    _error(client.post(URL, json={"image_url": image_server.url("/error")}), 502, "storage_error")


# -- local paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["../products.csv", "/etc/passwd", "a/../../products.csv", "../../../etc/hosts"])
def test_paths_outside_the_root_are_refused(client: Any, path: str) -> None:
    _error(client.post(URL, json={"image_path": path}), 400, "path_not_allowed")


def test_missing_local_image_is_400(client: Any) -> None:
    _error(client.post(URL, json={"image_path": "no-such-photo.jpg"}), 400, "image_not_found")
