"""The soak's bad requests against the real app: each is refused with the 4xx the soak expects, and a reason."""

from __future__ import annotations

from typing import Any

import pytest

from eval.soak.traffic import BAD_REQUESTS, Planned, expected_status
from tests.api.conftest import API_KEY


@pytest.mark.parametrize(("label", "path", "body", "expect"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_each_bad_request_is_refused_as_the_soak_expects(
    client: Any, label: str, path: str, body: dict[str, Any] | None, expect: int
) -> None:
    """The oracle is the running app: a soak that counted a right refusal as an error would report a false alarm."""
    key = "wrong-key" if label == "wrong key" else API_KEY
    response = client.post(path, json=body, headers={"X-API-Key": key})
    planned = Planned("bad", path, body, expect=expect, label=label)
    assert expected_status(planned, response.status_code), (label, response.status_code, response.text[:200])
    assert response.json()["error"]["message"]  # a reason, not a bare status
