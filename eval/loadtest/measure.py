"""What the load test measures: the raw encoder's images/s, the warm-up, ``/metrics`` scrapes and Locust runs.

:func:`measure_encoder` times the image encoder alone (per torch thread count and batch
size) with the CPU it and other processes used; :func:`run_locust` runs one headless Locust
as a subprocess and returns its statistics, history, failures and the CPU each process used,
the API's busiest threads included.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from eval.loadtest.client import ENV_SUMMARY, ENV_WAIT, RECOMMEND_PATH, check_response
from eval.loadtest.parse import (
    MetricsSnapshot,
    parse_failures_csv,
    parse_history_csv,
    parse_prometheus,
    parse_stats_csv,
)
from eval.loadtest.targets import run_title
from eval.process import Service, ServiceError, busy_cpu_seconds, own_cpu_seconds, tail, venv_script
from retrieval.batching import serving_threads
from retrieval.images import decode_image

if TYPE_CHECKING:
    from rich.progress import Progress

    from api.settings import Settings
    from retrieval.encoders import ImageEncoder

__all__ = [
    "LOCUSTFILE",
    "LoadtestError",
    "LocustRun",
    "measure_encoder",
    "run_locust",
    "scrape",
    "service_torch_threads",
    "warm_up",
]

# The locustfile sits beside the package, where `locust -f eval/locustfile.py` finds it too.
LOCUSTFILE = Path(__file__).resolve().parents[1] / "locustfile.py"

# The API's busiest threads recorded per run.
_TOP_THREADS = 6


class LoadtestError(ServiceError):
    """The load test cannot go on (the API did not start, a warm-up request failed, ...)."""


def service_torch_threads(settings: Settings) -> int:
    """The torch threads ``tandem serve`` gives its encoder: configured, else its own default rule."""
    return serving_threads(settings.api.torch_threads)


def measure_encoder(
    settings: Settings,
    build_encoder: Callable[[], ImageEncoder],
    paths: Sequence[Path],
    *,
    seconds: float,
    batch_sizes: Sequence[int] = (32, 1),
    thread_counts: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Images/s of the image encoder alone on the decoded ``paths``: per torch thread count and batch size.

    ``thread_counts`` defaults to every core (the machine's capacity: ``images_per_s``, batch
    ``batch_sizes[0]``) and the service's own count (:func:`service_torch_threads`:
    ``service_threads_images_per_s``) when it differs. The first batch size gets ``seconds``,
    the others half. ``build_encoder`` builds it as the service does; it is freed afterwards.
    """
    import torch  # noqa: PLC0415 - lazy: torch costs seconds of start-up; only this path needs it

    cores = os.cpu_count() or 1
    service = service_torch_threads(settings)
    counts = list(thread_counts) if thread_counts else sorted({cores, service}, reverse=True)
    t0 = time.perf_counter()
    images = [decode_image(Path(p).read_bytes(), settings.images, name=str(p)) for p in paths]
    decode_s = time.perf_counter() - t0
    if not images:
        raise LoadtestError("no photo to encode")
    encoder = build_encoder()
    result: dict[str, Any] = {
        "model_id": encoder.model_id,
        "device": settings.encoders.device,
        "thread_counts": counts,
        "service_threads": service,
        "images": len(images),
        "decode_images_per_s": round(len(images) / decode_s, 1) if decode_s > 0 else None,
        "reference_batch": batch_sizes[0],
        "batches": [],
    }
    original_threads = torch.get_num_threads()
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            for i, bs in enumerate(batch_sizes):
                result["batches"].append(
                    _time_encoder(encoder, images, bs, seconds if i == 0 else seconds / 2, progress)
                )
                result["batches"][-1]["threads"] = threads
    finally:
        torch.set_num_threads(original_threads)
        del encoder
        gc.collect()
    result["images_per_s"] = _rate(result["batches"], counts[0], batch_sizes[0])
    result["service_threads_images_per_s"] = _rate(result["batches"], service, batch_sizes[0])
    return result


def _rate(batches: Sequence[Mapping[str, Any]], threads: int, batch_size: int) -> float | None:
    return next(
        (b["images_per_s"] for b in batches if b["threads"] == threads and b["batch_size"] == batch_size),
        None,
    )


def _time_encoder(
    encoder: Any, images: Sequence[Any], bs: int, budget: float, progress: Progress | None
) -> dict[str, Any]:
    """Encode ``images`` in batches of ``bs`` for ``budget`` seconds (after two untimed batches)."""
    import torch  # noqa: PLC0415 - lazy: torch costs seconds of start-up; only this path needs it

    threads = torch.get_num_threads()
    task = progress.add_task(f"raw encoder, {threads} thread(s), batch {bs}", total=budget) if progress else None
    batches = [images[j : j + bs] for j in range(0, len(images) - bs + 1, bs)] or [list(images[:bs])]
    for b in batches[:2]:  # warm-up
        encoder.encode(b)
    times: list[float] = []
    done = 0
    busy_before, self_before = busy_cpu_seconds(), own_cpu_seconds(resource.RUSAGE_SELF)
    start = time.perf_counter()
    while True:
        b = batches[len(times) % len(batches)]
        t = time.perf_counter()
        encoder.encode(b)
        times.append(time.perf_counter() - t)
        done += len(b)
        elapsed = time.perf_counter() - start
        if progress is not None and task is not None:
            progress.update(task, completed=min(elapsed, budget))
        if elapsed >= budget:
            break
    used = own_cpu_seconds(resource.RUSAGE_SELF) - self_before
    busy = busy_cpu_seconds() - busy_before
    ms = np.asarray(times) * 1e3
    return {
        "batch_size": bs,
        "images_per_s": round(done / elapsed, 1),
        "mean_ms": round(float(ms.mean()), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "batches": len(times),
        "seconds": round(elapsed, 2),
        # CPU cores the encoder used, and what other processes took meanwhile.
        "cores_used": round(used / elapsed, 2),
        "other_cores": round(max(busy - used, 0.0) / elapsed, 2),
    }


def warm_up(base_url: str, key: str, payloads: Sequence[Mapping[str, Any]], top_k: int) -> list[float]:
    """Send ``payloads`` one by one; the first must be a good answer. Latencies in ms."""

    times: list[float] = []
    with httpx.Client(timeout=30.0) as client:
        for i, payload in enumerate(payloads):
            t0 = time.perf_counter()
            resp = client.post(f"{base_url}{RECOMMEND_PATH}", json=dict(payload), headers={"X-API-Key": key})
            times.append((time.perf_counter() - t0) * 1e3)
            try:
                body: Any = resp.json()
            except ValueError:
                body = None
            problem = check_response(resp.status_code, body, top_k)
            if problem is not None and i == 0:
                raise LoadtestError(
                    f"the API's answer to a warm-up request {dict(payload)} is a failure ({problem}): {resp.text[:500]}"
                )
    return times


def scrape(base_url: str, key: str) -> MetricsSnapshot | None:
    """``GET /metrics`` parsed, or ``None`` when the service has none (or answers something else)."""

    try:
        resp = httpx.get(f"{base_url}/metrics", headers={"X-API-Key": key}, timeout=10.0)
        if resp.status_code != 200:
            return None
        return parse_prometheus(resp.text)
    except (httpx.HTTPError, ValueError):
        return None


@dataclass
class LocustRun:
    """One Locust run to make: its name, users, spawn rate, think time and measured seconds."""

    name: str
    users: int
    spawn_rate: float
    think_s: tuple[float, float]
    duration_s: int

    @property
    def ramp_s(self) -> int:
        """Seconds to start every user; statistics are reset after it, so the run lasts that much longer."""
        return math.ceil(self.users / self.spawn_rate) if self.users > 1 else 0

    def argv(self, host: str, prefix: Path) -> list[str]:
        """Locust's command line: headless, statistics reset once every user runs, CSV files under ``prefix``."""
        return [
            venv_script("locust"),
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            str(self.users),
            "-r",
            f"{self.spawn_rate:g}",
            "-t",
            f"{self.duration_s + self.ramp_s}s",
            "--reset-stats",
            "--host",
            host,
            "--csv",
            str(prefix),
            "--only-summary",
            "--stop-timeout",
            "5",
        ]


class _CpuMeter:
    """CPU seconds of every service, of Locust (the only child reaped meanwhile), this driver and the machine."""

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = services
        self.api = next((s for s in services if s.name == "api"), None)
        self.before = {s.name: s.cpu_seconds() for s in services}
        self.threads_before = self.api.thread_cpu_seconds() if self.api is not None else {}
        self.children_before = own_cpu_seconds(resource.RUSAGE_CHILDREN)
        self.self_before = own_cpu_seconds(resource.RUSAGE_SELF)
        self.busy_before = busy_cpu_seconds()

    def cores(self, wall: float) -> dict[str, float]:
        # Locust is the only child reaped during the run, so the children's CPU time grew by Locust's alone.
        used = {s.name: s.cpu_seconds() - self.before[s.name] for s in self.services}
        used["locust"] = own_cpu_seconds(resource.RUSAGE_CHILDREN) - self.children_before
        used["driver"] = own_cpu_seconds(resource.RUSAGE_SELF) - self.self_before
        busy = busy_cpu_seconds() - self.busy_before
        cpu = {name: round(seconds / wall, 2) for name, seconds in used.items()}
        # Whatever else ran on the machine meanwhile (another job skews every figure).
        cpu["other"] = round(max(busy - sum(used.values()), 0.0) / wall, 2)
        cpu["machine_busy"] = round(busy / wall, 2)
        return cpu

    def api_threads(self, wall: float) -> list[dict[str, Any]]:
        """The API's busiest threads: one near 1.0 is a serial bottleneck; several summing to ~1 hint at the GIL."""
        threads_after = self.api.thread_cpu_seconds() if self.api is not None else {}
        thread_cores = [
            (round((sec - self.threads_before.get(tid, (name, 0.0))[1]) / wall, 2), f"{name} ({tid})")
            for tid, (name, sec) in threads_after.items()
        ]
        return [{"thread": t, "cores": c} for c, t in sorted(thread_cores, reverse=True)[:_TOP_THREADS]]


def _watch(proc: Service, total_s: float, progress: Progress | None, task: Any) -> float:
    """Wait for Locust to finish (SIGTERM after its time plus 90 s); the wall-clock seconds it ran."""
    t0 = time.perf_counter()
    try:
        while proc.alive():
            elapsed = time.perf_counter() - t0
            if progress is not None and task is not None:
                progress.update(task, completed=min(elapsed, total_s))
            if elapsed > total_s + 90:
                proc.proc.send_signal(signal.SIGTERM)  # Locust writes its statistics on SIGTERM
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.proc.wait(timeout=15)
                break
            time.sleep(0.25)
    finally:
        proc.stop(grace_s=5)
    return time.perf_counter() - t0


def _read_stats(prefix: Path, summary: Path, proc: Service) -> tuple[dict[str, Any], str]:
    """Locust's statistics: the locustfile's exact summary, else the stats CSV; and where they came from."""
    stats_csv = Path(f"{prefix}_stats.csv")
    if summary.is_file():
        stats = json.loads(summary.read_text(encoding="utf-8"))
        return stats, "Locust's final statistics (written by the locustfile on quit)"
    if stats_csv.is_file():
        stats = parse_stats_csv(stats_csv)
        failures = Path(f"{prefix}_failures.csv")
        stats["errors"] = parse_failures_csv(failures) if failures.is_file() else []
        return stats, f"{stats_csv.name} (Aggregated row)"
    raise LoadtestError(f"Locust wrote no statistics (exit code {proc.proc.returncode}); its output:\n{tail(proc.log)}")


def run_locust(
    spec: LocustRun,
    *,
    host: str,
    work: Path,
    env: Mapping[str, str],
    services: Sequence[Service],
    progress: Progress | None,
) -> dict[str, Any]:
    """One headless Locust run as a subprocess: its statistics, failures, history and the CPU each process used."""
    prefix = work / spec.name
    summary = work / f"{spec.name}_summary.json"
    run_env = {**env, ENV_WAIT: f"{spec.think_s[0]:g}-{spec.think_s[1]:g}", ENV_SUMMARY: str(summary)}
    argv = spec.argv(host, prefix)
    meter = _CpuMeter(services)
    total_s = spec.duration_s + spec.ramp_s
    task = progress.add_task(f"locust: {run_title(spec.name, spec.users)}", total=total_s) if progress else None
    proc = Service(f"locust ({spec.name})", argv, work / f"{spec.name}.log", run_env)
    wall = _watch(proc, total_s, progress, task)
    if progress is not None and task is not None:
        progress.update(task, completed=total_s)
    cpu = meter.cores(wall)
    api_threads = meter.api_threads(wall)
    stats, source = _read_stats(prefix, summary, proc)
    errors = stats.pop("errors", [])
    history_csv = Path(f"{prefix}_stats_history.csv")
    return {
        "name": spec.name,
        "title": run_title(spec.name, spec.users),
        "users": spec.users,
        "spawn_rate": spec.spawn_rate,
        "think_s": list(spec.think_s),
        "duration_s": spec.duration_s,
        "ramp_s": spec.ramp_s,
        "wall_s": round(wall, 1),
        "exit_code": proc.proc.returncode,
        "stats": stats,
        "stats_source": source,
        "errors": errors,
        "history": parse_history_csv(history_csv) if history_csv.is_file() else [],
        "cpu": cpu,
        "api_threads": api_threads,
    }
