"""Worker health for the dispatcher: liveness probes, model discovery, and the up/down verdict with its metrics.

:func:`probe` asks one worker whether it is alive (and, the first time, which models it
serves); :func:`record_check` turns the answer into the worker's state, and
:func:`mark_down` / :func:`publish` are what a failed request uses too. The dispatcher's
health loop calls these; scheduling the queue after a worker comes back stays its business.
"""

from __future__ import annotations

import logging

import httpx

from llms.attempts import auth_headers
from llms.metrics import DispatcherMetrics
from llms.workers import WorkerState

__all__ = ["mark_down", "probe", "publish", "record_check"]

logger = logging.getLogger("tandem.llms")

_BREAKER_CODE = {"closed": 0, "half_open": 1, "open": 2}


async def probe(client: httpx.AsyncClient, worker: WorkerState, timeout_s: float) -> bool:
    """Whether ``worker`` answers its liveness URL and, until it has, lists the models it serves."""
    try:
        response = await client.get(worker.config.liveness_url, headers=auth_headers(worker), timeout=timeout_s)
        ok = response.status_code == 200
    except httpx.HTTPError:
        ok = False
    if ok and not worker.models:
        ok = await _discover_models(client, worker, timeout_s)
    return ok


async def _discover_models(client: httpx.AsyncClient, worker: WorkerState, timeout_s: float) -> bool:
    try:
        response = await client.get(worker.config.models_url, headers=auth_headers(worker), timeout=timeout_s)
        response.raise_for_status()
        worker.models = frozenset(str(m["id"]) for m in response.json()["data"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return False
    return True


def record_check(worker: WorkerState, ok: bool, *, unhealthy_after: int, metrics: DispatcherMetrics) -> None:
    """Apply one probe's answer: a success brings the worker back; ``unhealthy_after`` failures in a row take it out."""
    if ok:
        worker.failed_checks = 0
        if not worker.healthy:
            # The process answers again (restarted): give it a clean breaker too.
            worker.healthy = True
            worker.breaker.reset()
            logger.info("llm worker back", extra={"worker": worker.name})
        publish(worker, metrics)
        return
    worker.failed_checks += 1
    if worker.healthy and worker.failed_checks >= unhealthy_after:
        mark_down(worker, "health check failed", metrics)


def mark_down(worker: WorkerState, reason: str, metrics: DispatcherMetrics) -> None:
    """Take ``worker`` out of rotation until a health check brings it back."""
    if worker.healthy:
        worker.healthy = False
        logger.warning("llm worker out", extra={"worker": worker.name, "reason": reason})
    publish(worker, metrics)


def publish(worker: WorkerState, metrics: DispatcherMetrics) -> None:
    """Show the worker's health and breaker state in ``metrics`` (a removed worker has no series left)."""
    if worker.removed:
        return
    metrics.healthy.labels(worker.name).set(1 if worker.healthy else 0)
    metrics.breaker.labels(worker.name).set(_BREAKER_CODE[worker.breaker.state])
