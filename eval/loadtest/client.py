"""The load test's client side: what ``eval/locustfile.py`` sends, checks and writes when Locust quits.

The request body, the check of an answer, the environment the driver hands the locustfile
(:class:`ClientConfig`) and the summary of Locust's final statistics; it imports nothing
heavy (no locust), so the driver and the tests can use it too.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = [
    "ENV_IDS_FILE",
    "ENV_IMAGE_BASE",
    "ENV_KEY",
    "ENV_SUMMARY",
    "ENV_TOP_K",
    "ENV_WAIT",
    "RECOMMEND_PATH",
    "ClientConfig",
    "build_payload",
    "check_response",
    "clean_error",
    "load_ids",
    "parse_wait",
    "pct_key",
    "summarise_locust_entry",
]

RECOMMEND_PATH = "/v1/recommendations"

ENV_IMAGE_BASE = "TANDEM_LOADTEST_IMAGE_BASE"
ENV_IDS_FILE = "TANDEM_LOADTEST_IDS_FILE"
ENV_KEY = "TANDEM_LOADTEST_KEY"
ENV_WAIT = "TANDEM_LOADTEST_WAIT"
ENV_TOP_K = "TANDEM_LOADTEST_TOP_K"
ENV_SUMMARY = "TANDEM_LOADTEST_SUMMARY"


def parse_wait(text: str | None) -> tuple[float, float]:
    """Think time from ``TANDEM_LOADTEST_WAIT``: ``""``/``"0"`` = none, ``"1"`` = 1 s, ``"0.5-1.5"`` = uniform.

    >>> parse_wait("0.5-1.5"), parse_wait("0"), parse_wait("2")
    ((0.5, 1.5), (0.0, 0.0), (2.0, 2.0))
    """
    raw = (text or "").strip()
    if not raw:
        return 0.0, 0.0
    lo_text, sep, hi_text = raw.partition("-")
    try:
        lo = float(lo_text)
        hi = float(hi_text) if sep else lo
    except ValueError as exc:
        raise ValueError(f"think time {raw!r} is not 'S' or 'MIN-MAX' in seconds") from exc
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi < lo:
        raise ValueError(f"think time {raw!r} needs 0 <= MIN <= MAX")
    return lo, hi


def load_ids(path: Path) -> list[str]:
    """Product ids, one per line (blank lines ignored); an empty file is an error."""
    ids = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path} lists no product id")
    return ids


def build_payload(image_base: str, product_id: str, top_k: int) -> dict[str, Any]:
    """The JSON body of one request: the photo ``<image_base>/<id>.jpg`` and ``top_k``.

    >>> build_payload("http://127.0.0.1:8001/", "123", 10)
    {'image_url': 'http://127.0.0.1:8001/123.jpg', 'top_k': 10}
    """
    return {"image_url": f"{image_base.rstrip('/')}/{quote(product_id)}.jpg", "top_k": top_k}


def check_response(status: int, body: Any, top_k: int) -> str | None:
    """Why an answer is a failure (``None`` when it is a good one): not 200, not JSON, no items, too many."""
    if status != 200:
        detail = ""
        if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
            detail = f" ({body['error'].get('code', '?')})"
        return f"HTTP {status}{detail}"
    if not isinstance(body, Mapping):
        return "the answer is not a JSON object"
    items = body.get("items")
    if not isinstance(items, list):
        return "the answer has no 'items' list"
    if not items:
        return "the answer has no item"
    if len(items) > top_k:
        return f"{len(items)} items for top_k={top_k}"
    return None


@dataclass(frozen=True)
class ClientConfig:
    """The locustfile's settings, from the environment the driver gives it."""

    image_base: str
    ids: list[str]
    api_key: str
    wait: tuple[float, float]
    top_k: int = 10
    summary_path: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClientConfig:
        missing = [name for name in (ENV_IMAGE_BASE, ENV_IDS_FILE, ENV_KEY) if not env.get(name)]
        if missing:
            raise ValueError(f"the locustfile needs {', '.join(missing)} (tandem bench loadtest sets them)")
        top_k = int(env.get(ENV_TOP_K) or 10)
        if top_k <= 0:
            raise ValueError(f"{ENV_TOP_K} must be positive, got {top_k}")
        summary = env.get(ENV_SUMMARY)
        return cls(
            image_base=env[ENV_IMAGE_BASE],
            ids=load_ids(Path(env[ENV_IDS_FILE])),
            api_key=env[ENV_KEY],
            wait=parse_wait(env.get(ENV_WAIT)),
            top_k=top_k,
            summary_path=Path(summary) if summary else None,
        )

    def payload(self, rng: random.Random) -> dict[str, Any]:
        """A request for a product photo drawn uniformly from :attr:`ids`."""
        return build_payload(self.image_base, rng.choice(self.ids), self.top_k)


def pct_key(column: str) -> str:
    """``"95%"`` → ``"p95_ms"``, ``"99.9%"`` → ``"p99_9_ms"``."""
    return "p" + column.strip().rstrip("%").replace(".", "_") + "_ms"


def _readable_percentile(p: float) -> str:
    """Locust's column name of a percentile: 0.95 → ``"95%"``, 0.999 → ``"99.9%"``."""
    return f"{p * 100:.6g}%"


def clean_error(text: str) -> str:
    """A failure's message without Locust's wrapper: ``CatchResponseError('HTTP 503')`` → ``HTTP 503``.

    >>> clean_error("CatchResponseError('HTTP 502 (upstream)')")
    'HTTP 502 (upstream)'
    """
    match = re.fullmatch(r"CatchResponseError\((['\"])(.*)\1\)", text.strip(), flags=re.DOTALL)
    return match.group(2) if match else text


def summarise_locust_entry(
    entry: Any, percentiles: Sequence[float], errors: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Final statistics of a Locust ``StatsEntry`` (the ``Aggregated`` one), in :func:`parse_stats_csv`'s keys.

    The locustfile writes this when Locust quits: the stats CSV is written once a second and can
    miss the last second of a run; this is exact.
    """
    n = int(entry.num_requests)
    stats: dict[str, Any] = {
        "requests": n,
        "failures": int(entry.num_failures),
        "error_rate": (int(entry.num_failures) / n) if n else None,
        "median_ms": float(entry.median_response_time) if n else None,
        "mean_ms": float(entry.avg_response_time) if n else None,
        "min_ms": float(entry.min_response_time or 0) if n else None,
        "max_ms": float(entry.max_response_time) if n else None,
        "rps": float(entry.total_rps),
        "fail_per_s": float(entry.total_fail_per_sec),
    }
    for p in percentiles:
        stats[pct_key(_readable_percentile(p))] = float(entry.get_response_time_percentile(p)) if n else None
    stats["errors"] = [{**e, "error": clean_error(str(e.get("error", "")))} for e in errors]
    return stats
