"""Locust user of ``make loadtest``: a buyer who asks for products like a photo, by URL.

Each task POSTs ``{"image_url": "<TANDEM_LOADTEST_IMAGE_BASE>/<id>.jpg", "top_k": 10}`` to
``/v1/recommendations`` with the ``X-API-Key`` header, for a product id drawn at random from
``TANDEM_LOADTEST_IDS_FILE``, and fails the request unless the answer is 200 with JSON
holding 1 to ``top_k`` ``items``. ``tandem bench loadtest`` starts the image server and
the API and sets the environment; by hand:

    TANDEM_LOADTEST_IMAGE_BASE=http://127.0.0.1:8001 TANDEM_LOADTEST_IDS_FILE=ids.txt \\
    TANDEM_LOADTEST_KEY=secret TANDEM_LOADTEST_WAIT=0.5-1.5 \\
    .venv/bin/locust -f eval/locustfile.py --headless -u 50 -r 50 -t 60s --host http://127.0.0.1:8000

Environment: ``TANDEM_LOADTEST_WAIT`` is the think time between a user's requests
(``0`` = none, a saturation run; ``0.5-1.5`` = uniform, the reference's ~1 s);
``TANDEM_LOADTEST_TOP_K`` (default 10); ``TANDEM_LOADTEST_SUMMARY`` a JSON file where the
exact final statistics are written when Locust quits.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, constant, events, task
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsError

from eval.loadtest import RECOMMEND_PATH, ClientConfig, check_response, summarise_locust_entry

CONFIG = ClientConfig.from_env(os.environ)
_state: dict[str, Environment] = {}


class RecommendationUser(FastHttpUser):
    """One buyer: photo URL in, top-K products out, ``CONFIG.wait`` seconds of think time in between."""

    wait_time = between(*CONFIG.wait) if CONFIG.wait[1] > CONFIG.wait[0] else constant(CONFIG.wait[0])

    def on_start(self) -> None:
        self._rng = random.Random()

    @task
    def recommend(self) -> None:
        payload = CONFIG.payload(self._rng)
        with self.client.post(
            RECOMMEND_PATH,
            json=payload,
            headers={"X-API-Key": CONFIG.api_key},
            name=RECOMMEND_PATH,
            catch_response=True,
        ) as resp:
            try:
                body: Any = resp.json()
            except (ValueError, TypeError):  # not JSON, or no body at all (a connection error)
                body = None
            problem = check_response(resp.status_code or 0, body, CONFIG.top_k)
            error = getattr(resp, "error", None)
            if not resp.status_code and error is not None:  # no answer at all: say why
                problem = f"no answer: {error.__class__.__name__}: {error}"
            if problem is not None:
                resp.failure(problem)
            else:
                resp.success()


@events.init.add_listener
def _remember(environment: Environment, **_kwargs: Any) -> None:
    _state["environment"] = environment


@events.quit.add_listener
def _write_summary(**_kwargs: Any) -> None:
    """The exact final statistics (the stats CSV is written once a second and may miss the last one)."""
    environment = _state.get("environment")
    if CONFIG.summary_path is None or environment is None:
        return
    stats = environment.stats
    errors = [
        {"method": e.method, "name": e.name, "error": StatsError.parse_error(e.error), "occurrences": e.occurrences}
        for e in stats.errors.values()
    ]
    summary = summarise_locust_entry(stats.total, PERCENTILES_TO_REPORT, errors)
    Path(CONFIG.summary_path).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
