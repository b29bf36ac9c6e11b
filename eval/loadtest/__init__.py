"""Load test of the recommendation API: Locust against ``tandem serve``, beside the raw encoder, in one run.

``tandem bench loadtest`` (``make loadtest``) reproduces the reference system's method —
Locust, photo-URL requests end to end (image download → inference → top-K), 50 concurrent
users — on this machine, and measures in the same run what the image encoder alone can do,
so the service's overhead is a number rather than a guess:

1. if the embedded index (or Tandem's own image tower) is missing, ``tandem demo [--limit N]``
   builds it first (what ``make run`` does);
2. ``ids`` product photos are picked at random from the catalogue's ``images/`` folder and
   served by a local image server (:func:`serve_images`, a subprocess on 127.0.0.1), so the
   API's fetch stage is real HTTP;
3. the **raw encoder** (:func:`api.components.build_image_encoder`) encodes the same decoded
   photos in batches of 32 (and of 1) for ``raw_s`` seconds, before anything of ours loads the
   CPU (before it and before each Locust run, the driver waits up to ``quiet_wait_s`` for other
   processes to leave the CPU, and reports what they still used);
4. the API starts as a subprocess (``tandem serve``) with a random API key and loopback
   image URLs allowed (``TANDEM_STORAGE__URL_ALLOW=127.0.0.1``; SSRF protection refuses them
   otherwise), and is warmed up once ``GET /readyz`` answers 200;
5. Locust (``eval/locustfile.py``, headless, one process) runs three times: one user without
   think time; 50 users with the reference's think time; 50 users without think time
   (saturation). Users start at ``spawn_rate`` per second and the statistics are reset once
   all run (``--reset-stats``): the figures are the steady state. ``GET /metrics`` is scraped
   around each run;
6. ``eval/reports/api_loadtest.{md,json,png}``: the machine, the reference beside our figures,
   every target with PASS/MISS, the raw encoder throughput and the API/encoder ratio.

Think time: the reference reports ~40 requests/s with 50 users at a 210 ms mean latency
without naming its think time; by Little's law (throughput = users / (latency + think time))
that is 50 / 40 − 0.21 ≈ 1.04 s, reproduced here with a uniform 0.5–1.5 s wait.

Modules: :mod:`~eval.loadtest.client` (what the locustfile sends and checks),
:mod:`~eval.loadtest.parse` (Locust's CSV output, Prometheus text), :mod:`~eval.loadtest.targets`
(the reference and the targets), :mod:`~eval.loadtest.measure` (raw encoder, Locust runs),
:mod:`~eval.loadtest.run` (the services and :func:`run`), :mod:`~eval.loadtest.report` and
:mod:`~eval.loadtest.cli`; the processes themselves are :mod:`eval.process`'s. The pure parts
import nothing heavy; torch is loaded only by the raw encoder measurement.

Example:
    >>> from api.settings import get_settings
    >>> results = run(get_settings(), LoadtestConfig.quick_config(), reports_dir=Path("/tmp/lt"))  # doctest: +SKIP
    >>> results["runs"]["saturation"]["stats"]["rps"]  # doctest: +SKIP
    150.3
"""

from __future__ import annotations

from eval.loadtest.cli import main
from eval.loadtest.client import (
    ENV_IDS_FILE,
    ENV_IMAGE_BASE,
    ENV_KEY,
    ENV_SUMMARY,
    ENV_TOP_K,
    ENV_WAIT,
    RECOMMEND_PATH,
    ClientConfig,
    build_payload,
    check_response,
    clean_error,
    load_ids,
    parse_wait,
    summarise_locust_entry,
)
from eval.loadtest.measure import LoadtestError, measure_encoder
from eval.loadtest.parse import (
    MetricsSnapshot,
    mean_batch_size,
    metrics_delta,
    parse_failures_csv,
    parse_history_csv,
    parse_prometheus,
    parse_stats_csv,
    stage_means_ms,
)
from eval.loadtest.report import write_report
from eval.loadtest.run import LoadtestConfig, ensure_index, index_missing, pick_ids, run, serve_images, tower_missing
from eval.loadtest.targets import REFERENCE, evaluate_targets, run_title
from eval.process import free_port, wait_for_quiet

__all__ = [
    "ENV_IDS_FILE",
    "ENV_IMAGE_BASE",
    "ENV_KEY",
    "ENV_SUMMARY",
    "ENV_TOP_K",
    "ENV_WAIT",
    "RECOMMEND_PATH",
    "REFERENCE",
    "ClientConfig",
    "LoadtestConfig",
    "LoadtestError",
    "MetricsSnapshot",
    "build_payload",
    "check_response",
    "clean_error",
    "ensure_index",
    "evaluate_targets",
    "free_port",
    "index_missing",
    "load_ids",
    "main",
    "mean_batch_size",
    "measure_encoder",
    "metrics_delta",
    "parse_failures_csv",
    "parse_history_csv",
    "parse_prometheus",
    "parse_stats_csv",
    "parse_wait",
    "pick_ids",
    "run",
    "run_title",
    "serve_images",
    "stage_means_ms",
    "summarise_locust_entry",
    "tower_missing",
    "wait_for_quiet",
    "write_report",
]
