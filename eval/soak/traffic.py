"""The soak's request mix: what each kind sends, and which answers count as right.

Five kinds, drawn by weight for every arrival: a recommendation by photo URL, one by words, a
chat turn, a streamed chat turn, and a bad request (one of several a real client gets wrong,
which must be refused with its own 4xx). An answer is *unexpected* when its status is not
the one its kind expects, or when no answer came at all.

Example:
    >>> mix = TrafficMix(image_base="http://127.0.0.1:8001", ids=["15970"], queries=["navy shirt"])
    >>> kind = mix.draw(random.Random(0)); kind.name in KINDS
    True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BAD_REQUESTS", "KINDS", "Planned", "TrafficMix", "expected_status"]

KINDS = ("photo", "text", "chat", "chat_stream", "bad")
DEFAULT_WEIGHTS = {"photo": 0.45, "text": 0.25, "chat": 0.08, "chat_stream": 0.07, "bad": 0.15}

# (label, path, body, expected status): requests a real client gets wrong; each must be refused with its own 4xx.
BAD_REQUESTS: tuple[tuple[str, str, dict[str, Any] | None, int], ...] = (
    ("empty body", "/v1/recommendations", {}, 422),
    ("not base64", "/v1/recommendations", {"image_base64": "%%%not-base64%%%"}, 400),
    ("top_k 0", "/v1/recommendations", {"text": "shirt", "top_k": 0}, 422),
    ("unknown filter", "/v1/recommendations", {"text": "shirt", "filters": {"attributes": {"fabric": ["silk"]}}}, 422),
    ("private image URL", "/v1/recommendations", {"image_url": "http://10.0.0.1/x.jpg"}, 400),
    ("unknown session", "/v1/chat", {"session_id": "no-such-session", "message": {"text": "more"}}, 404),
    ("wrong key", "/v1/recommendations", {"text": "shirt"}, 401),
)


@dataclass(frozen=True)
class Planned:
    """One request to send: its kind, path, JSON body, whether it streams, and the status it expects."""

    name: str
    path: str
    body: dict[str, Any] | None
    stream: bool = False
    expect: int = 200
    label: str = ""
    wrong_key: bool = False


def expected_status(planned: Planned, status: int | None) -> bool:
    """Whether the answer is the one this request expects (no answer at all never is)."""
    if status is None:
        return False
    if planned.name == "bad" and planned.expect == 422:
        return status in (400, 422)  # either is a schema refusal with a reason; both are the client's error
    return status == planned.expect


@dataclass(frozen=True)
class TrafficMix:
    """Draws the soak's requests: photos from ``ids`` served at ``image_base``, words from ``queries``."""

    image_base: str
    ids: Sequence[str]
    queries: Sequence[str]
    weights: tuple[tuple[str, float], ...] = tuple(DEFAULT_WEIGHTS.items())
    top_k: int = 10

    def draw(self, rng: random.Random) -> Planned:
        names = [n for n, _ in self.weights]
        name = rng.choices(names, weights=[w for _, w in self.weights])[0]
        if name == "photo":
            body = {"image_url": f"{self.image_base}/{rng.choice(self.ids)}.jpg", "top_k": self.top_k}
            return Planned(name, "/v1/recommendations", body)
        if name == "text":
            return Planned(name, "/v1/recommendations", {"text": rng.choice(self.queries), "top_k": self.top_k})
        if name in ("chat", "chat_stream"):
            body = {"message": {"text": rng.choice(self.queries)}, "top_k": 5, "stream": name == "chat_stream"}
            return Planned(name, "/v1/chat", body, stream=name == "chat_stream")
        label, path, bad, expect = rng.choice(BAD_REQUESTS)
        return Planned("bad", path, bad, expect=expect, label=label, wrong_key=label == "wrong key")
