"""POST /v1/recommendations: every input kind, filters, and the NumPy oracle for flat search."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.api.conftest import BUCKET, ImageServer

URL = "/v1/recommendations"


def _first_image(catalogue: Path, n: int = 0) -> Path:
    return sorted((catalogue / "images").glob("*.jpg"))[n]


def _check_response(body: dict[str, Any], k: int) -> None:
    assert set(body) >= {"request_id", "mode", "items", "timing_ms"}
    assert len(body["items"]) == k
    assert set(body["timing_ms"]) >= {"fetch", "encode", "search", "total"}
    t = body["timing_ms"]
    assert t["total"] >= max(t["fetch"], t["encode"], t["search"]) >= 0
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    for it in body["items"]:
        assert it["image_url"].endswith(f"/images/{it['product_id']}.jpg")
        assert it["category"] == " > ".join(it["category_path"])


@pytest.mark.parametrize("mode", ["hierarchical", "flat"])
def test_image_path_under_the_local_root_finds_the_product_itself(
    client: Any, small_catalogue_dir: Path, mode: str
) -> None:
    photo = _first_image(small_catalogue_dir, 7)
    r = client.post(URL, json={"image_path": photo.name, "top_k": 5, "mode": mode})
    assert r.status_code == 200, r.text
    body = r.json()
    _check_response(body, 5)
    assert body["mode"] == mode
    assert body["items"][0]["product_id"] == photo.stem
    assert r.headers["x-request-id"] == body["request_id"]


def test_image_base64_plain_and_data_url(client: Any, small_catalogue_dir: Path) -> None:
    photo = _first_image(small_catalogue_dir, 3)
    encoded = base64.b64encode(photo.read_bytes()).decode()
    for value in (encoded, f"data:image/jpeg;base64,{encoded}"):
        r = client.post(URL, json={"image_base64": value, "top_k": 3})
        assert r.status_code == 200, r.text
        assert r.json()["items"][0]["product_id"] == photo.stem


def test_image_url_from_an_allow_listed_server(client: Any, image_server: ImageServer) -> None:
    name = sorted(image_server.files)[4]
    r = client.post(URL, json={"image_url": image_server.url(f"/photos/{name}"), "top_k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    _check_response(body, 4)
    assert body["items"][0]["product_id"] == name.removesuffix(".jpg")
    assert body["timing_ms"]["fetch"] > 0


def test_image_url_redirect_within_allowed_hosts_is_followed(client: Any, image_server: ImageServer) -> None:
    name = sorted(image_server.files)[5]
    target = image_server.url(f"/p/{name}")
    r = client.post(URL, json={"image_url": image_server.url(f"/redirect?to={target}")})
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["product_id"] == name.removesuffix(".jpg")


def test_s3_path_through_an_s3_compatible_server(client: Any, small_catalogue_dir: Path) -> None:
    photo = _first_image(small_catalogue_dir, 2)
    r = client.post(URL, json={"image_path": f"s3://{BUCKET}/2026/{photo.name}", "top_k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["product_id"] == photo.stem


def test_s3_missing_key_and_unlisted_bucket_are_400(client: Any) -> None:
    r = client.post(URL, json={"image_path": f"s3://{BUCKET}/2026/none.jpg"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "image_not_found"
    r = client.post(URL, json={"image_path": "s3://other-bucket/x.jpg"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "path_not_allowed"


def test_multipart_upload_with_the_same_fields(client: Any, small_catalogue_dir: Path) -> None:
    photo = _first_image(small_catalogue_dir, 9)
    r = client.post(
        f"{URL}/upload",
        files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
        data={"top_k": "6", "mode": "flat", "filters": '{"category_prefix": ["Apparel"]}'},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "flat" and len(body["items"]) == 6
    assert all(it["category_path"][0] == "Apparel" for it in body["items"])
    r = client.post(f"{URL}/upload", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["product_id"] == photo.stem


def test_multipart_upload_refuses_unknown_fields(client: Any, small_catalogue_dir: Path) -> None:
    photo = _first_image(small_catalogue_dir)
    r = client.post(
        f"{URL}/upload", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}, data={"colour": "red"}
    )
    assert r.status_code == 422
    assert "colour" in r.json()["error"]["message"]


def test_text_only_query(client: Any) -> None:
    r = client.post(URL, json={"text": "red kurta for women", "top_k": 10})
    assert r.status_code == 200, r.text
    _check_response(r.json(), 10)


def test_flat_text_search_matches_numpy_brute_force(client: Any, text_encoder: Any) -> None:
    """Oracle: the API's flat text ranking equals exact cosine top-k over the stored text vectors."""
    store = client.app.state.resources.store
    payloads, vectors = zip(*store.scroll(vectors=["text"]), strict=True)
    matrix = np.stack([v["text"] for v in vectors])
    ids = [p["product_id"] for p in payloads]
    query = "leather wallet for men"
    q = text_encoder.encode([query])[0]
    expected = [ids[i] for i in np.argsort(-(matrix @ q), kind="stable")[:8]]
    r = client.post(URL, json={"text": query, "top_k": 8, "mode": "flat"})
    got = [it["product_id"] for it in r.json()["items"]]
    # HNSW may swap near-ties; the sets and the leader must agree.
    assert got[0] == expected[0]
    assert len(set(got) & set(expected)) >= 7


def test_filters_restrict_every_item(client: Any) -> None:
    r = client.post(
        URL,
        json={"text": "shirt", "top_k": 10, "filters": {"category_prefix": ["Apparel", "Topwear"]}},
    )
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert items and all(it["category_path"][:2] == ["Apparel", "Topwear"] for it in items)
    attrs = client.app.state.resources.retriever.retriever.manifest.attribute_fields
    name = attrs[0]
    store = client.app.state.resources.store
    value = next(p["attributes"][name] for p, _ in store.scroll(vectors=[]) if p["attributes"].get(name))
    r = client.post(URL, json={"text": "bag", "top_k": 5, "filters": {"attributes": {name: [value]}}})
    assert r.status_code == 200, r.text
    found = {it["product_id"] for it in r.json()["items"]}
    payload = {p["product_id"]: p for p, _ in store.scroll(vectors=[])}
    assert found and all(payload[pid]["attributes"][name] == value for pid in found)


def test_unknown_filter_attribute_is_422(client: Any) -> None:
    r = client.post(URL, json={"text": "bag", "filters": {"attributes": {"material": ["Leather"]}}})
    assert r.status_code == 422
    assert "material" in r.json()["error"]["message"]


def test_public_image_base_url_is_used_for_cards(settings_factory: Any, shared_encoders: None) -> None:
    from fastapi.testclient import TestClient

    from api.http.app import create_app
    from tests.api.conftest import API_KEY

    settings = settings_factory(api={"public_image_base_url": "https://cdn.example.com/catalogue/"})
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as c:
        items = c.post(URL, json={"text": "watch", "top_k": 3}).json()["items"]
    assert all(it["image_url"] == f"https://cdn.example.com/catalogue/{it['product_id']}.jpg" for it in items)


def test_catalogue_images_are_served_for_cards(client: Any) -> None:
    item = client.post(URL, json={"text": "shoes", "top_k": 1}).json()["items"][0]
    r = client.get(item["image_url"])
    assert r.status_code == 200
    assert r.content[:2] == b"\xff\xd8"  # a JPEG
    assert client.get("/images/..%2Fproducts.csv").status_code == 404


def test_every_answer_reports_its_diversity_and_mmr_raises_it(client: Any) -> None:
    from rag.diversity import category_ild

    plain = client.post(URL, json={"text": "casual shirts for men", "top_k": 8, "mode": "flat"}).json()
    info = plain["diversity"]
    assert set(info) == {"ild_image", "ild_text", "ild_category", "distinct_categories", "settings"}
    assert info["settings"] == {"pool": 8}
    assert info["ild_category"] == pytest.approx(category_ild([i["category_path"] for i in plain["items"]]), abs=1e-4)
    assert 0.0 <= info["ild_image"] <= 2.0 and 0.0 <= info["ild_text"] <= 2.0
    diverse = client.post(URL, json={"text": "casual shirts for men", "top_k": 8, "mode": "flat", "mmr_lambda": 0.0,
                                     "pool": 40}).json()  # fmt: skip
    assert diverse["diversity"]["settings"] == {"mmr_lambda": 0.0, "pool": 40}
    assert diverse["diversity"]["ild_image"] > info["ild_image"]
    # λ = 1 over the same pool is the relevance order: the plain top 8.
    same = client.post(URL, json={"text": "casual shirts for men", "top_k": 8, "mode": "flat", "mmr_lambda": 1.0,
                                  "pool": 40}).json()  # fmt: skip
    assert [i["product_id"] for i in same["items"]] == [i["product_id"] for i in plain["items"]]
    target = client.post(URL, json={"text": "casual shirts", "top_k": 5, "diversity": 0.8}).json()
    assert target["diversity"]["settings"]["diversity"] == 0.8
    assert target["diversity"]["settings"]["mmr_lambda"] == pytest.approx(0.2)  # no calibration: λ = 1 − diversity


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text": "x", "mmr_lambda": 0.5, "diversity": 0.5}, "not both"),
        ({"text": "x", "top_k": 10, "pool": 5}, "at least top_k"),
        ({"text": "x", "diversity": 1.5}, "less than or equal"),
    ],
)
def test_bad_diversity_knobs_are_422(client: Any, body: dict[str, Any], message: str) -> None:
    r = client.post(URL, json=body)
    assert r.status_code == 422 and message in r.json()["error"]["message"]
