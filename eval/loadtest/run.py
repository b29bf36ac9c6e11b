"""Running the load test: its configuration, the steps before it, the services it starts and :func:`run`.

:class:`LoadtestConfig` says what one load test does; :func:`run` builds the index when it is
missing, picks the photos, measures the raw encoder, starts the image server
(:func:`serve_images`) and the API, warms the API up, runs Locust three times with ``/metrics``
scraped around each run, stops every process it started and writes the report.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from eval.loadtest.client import ENV_IDS_FILE, ENV_IMAGE_BASE, ENV_KEY, ENV_TOP_K, build_payload
from eval.loadtest.measure import LoadtestError, LocustRun, measure_encoder, run_locust, scrape, warm_up
from eval.loadtest.parse import metrics_delta
from eval.loadtest.report import write_report
from eval.loadtest.targets import REFERENCE, REFERENCE_THINK_S, evaluate_targets, stat
from eval.machine import machine_info
from eval.process import Service, free_port, progress_display, tail, venv_script, wait_for_quiet, wait_http
from retrieval.store import manifest_path

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from api.settings import Settings
    from retrieval.encoders import ImageEncoder

__all__ = [
    "LoadtestConfig",
    "ensure_index",
    "index_missing",
    "pick_ids",
    "run",
    "serve_images",
    "tower_missing",
]

_WARMUP_REQUESTS = 10

# Runs in a fresh interpreter: the image server must not share the driver's GIL or CPU accounting.
_IMAGE_SERVER_CODE = "import sys; from eval.loadtest import serve_images; serve_images(sys.argv[1], int(sys.argv[2]))"


def serve_images(directory: Path | str, port: int, host: str = "127.0.0.1") -> None:
    """Serve ``directory`` over HTTP/1.1 (keep-alive, no Nagle delay, a deep listen backlog, no access log).

    ``python -m http.server`` would do, but its backlog of 5 connections makes a burst of
    concurrent downloads wait for TCP's 1 s SYN retransmission, and without keep-alive every
    download pays a connection: both would be charged to the API's fetch stage.
    """

    class Handler(SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            return

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024
        daemon_threads = True

    handler = functools.partial(Handler, directory=str(directory))
    with Server((host, port), handler) as server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


def index_missing(settings: Settings) -> bool:
    """The embedded index has no manifest (a Qdrant server, ``TANDEM_QDRANT__URL``, is not checked)."""

    return settings.qdrant.url is None and not manifest_path(settings.qdrant_dir).is_file()


def tower_missing(settings: Settings) -> bool:
    """Tandem's own image tower is the configured encoder but is not trained yet."""
    enc = settings.encoders
    own = enc.image_checkpoint is None and enc.image_model is None
    return own and not (settings.tower_dir / "open_clip_config.json").is_file()


def ensure_index(settings: Settings, limit: int | None, echo: Callable[[str], None]) -> str | None:
    """Run ``tandem demo [--limit N]`` when the index or the image tower is missing; what was run, or ``None``."""
    if not (index_missing(settings) or tower_missing(settings)):
        return None
    argv = [venv_script("tandem"), "demo", *(["--limit", str(limit)] if limit else [])]
    echo(f"no index or no image tower under {settings.home}: running {' '.join(argv[1:])} first")
    done = subprocess.run(argv, check=False)
    if done.returncode != 0:
        raise LoadtestError(f"`tandem {' '.join(argv[1:])}` failed with exit code {done.returncode}")
    return " ".join(["tandem", *argv[1:]])


def pick_ids(images_dir: Path, n: int, seed: int) -> list[str]:
    """``n`` product ids (sorted) with a ``<id>.jpg`` in ``images_dir``, drawn at random with ``seed``."""
    if n <= 0:
        raise ValueError("the number of product ids must be positive")
    ids = sorted(p.stem for p in Path(images_dir).glob("*.jpg"))
    if not ids:
        raise LoadtestError(f"no <id>.jpg photo in {images_dir}")
    return sorted(random.Random(seed).sample(ids, min(n, len(ids))))


@dataclass
class LoadtestConfig:
    """What one load test does; :meth:`quick` is the few-seconds variant for tests."""

    ids: int = 500
    single_s: int = 30
    users: int = 50
    duration_s: int = 60
    spawn_rate: float = 10.0
    think_s: tuple[float, float] = REFERENCE_THINK_S
    raw_s: float = 10.0
    top_k: int = 10
    seed: int = 0
    index_limit: int | None = None
    startup_timeout_s: float = 180.0
    warmup: int = _WARMUP_REQUESTS
    # Before each measurement, wait up to this long for other processes to leave the CPU (0: do not).
    quiet_wait_s: float = 120.0
    quick: bool = False
    # Build the index first when it is missing (tandem demo); off for a stand-in service.
    prepare_index: bool = True
    # The service's command line, ``{port}`` standing for its port; None = ``tandem serve`` (tests use a stand-in).
    api_argv: tuple[str, ...] | None = None

    @classmethod
    def quick_config(cls, **overrides: Any) -> LoadtestConfig:
        base: dict[str, Any] = {
            "ids": 100,
            "single_s": 5,
            "duration_s": 6,
            "raw_s": 2.0,
            "warmup": 3,
            "quiet_wait_s": 0.0,
            "quick": True,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def _quiet(cfg: LoadtestConfig, progress: Progress | None, own: Sequence[Service]) -> dict[str, float] | None:
    """:func:`wait_for_quiet` with a progress row; ``None`` when the config does not wait."""
    if cfg.quiet_wait_s <= 0:
        return None
    task = progress.add_task("waiting for other processes to leave the CPU", total=None) if progress else None
    result = wait_for_quiet(cfg.quiet_wait_s, own=own)
    if progress is not None and task is not None:
        progress.update(
            task,
            total=1,
            completed=1,
            description=f"CPU: other processes {result['other_cores']:.2f} cores (waited {result['waited_s']:.0f} s)",
        )
    return result


@dataclass
class _Session:
    """One load test's state: its photos, key and scratch folder, the services it started and what it measured."""

    settings: Settings
    cfg: LoadtestConfig
    ids: list[str]
    work: Path
    build_encoder: Callable[[], ImageEncoder]
    key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    services: list[Service] = field(default_factory=list)
    quiet: dict[str, dict[str, float] | None] = field(default_factory=dict)
    runs: dict[str, Any] = field(default_factory=dict)
    image_base: str = ""
    base_url: str = ""

    @property
    def images_dir(self) -> Path:
        return self.settings.catalogue.path / "images"


def _start_image_server(s: _Session) -> None:
    img_port = free_port()
    image_server = Service(
        "image_server",
        [sys.executable, "-c", _IMAGE_SERVER_CODE, str(s.images_dir), str(img_port)],
        s.work / "image_server.log",
    )
    s.services.append(image_server)
    s.image_base = f"http://127.0.0.1:{img_port}"
    wait_http(f"{s.image_base}/{quote(s.ids[0])}.jpg", image_server, 30)


def _start_api(s: _Session, progress: Progress | None) -> tuple[Service, float, Any]:
    """``tandem serve`` (or the configured stand-in) with loopback image URLs allowed; it, seconds to ready, /readyz."""

    api_port = free_port()
    s.base_url = f"http://127.0.0.1:{api_port}"
    # The per-key rate limit is off: the load test measures the service's capacity, not one key's quota.
    api_env = {
        **os.environ,
        "TANDEM_API__KEYS": s.key,
        "TANDEM_STORAGE__URL_ALLOW": "127.0.0.1",
        "TANDEM_API__RATE_PER_S": "0",
    }
    starting = (
        progress.add_task("starting the API (tandem serve), waiting for /readyz", total=None) if progress else None
    )
    api = Service(
        "api",
        [a.replace("{port}", str(api_port)) for a in s.cfg.api_argv]
        if s.cfg.api_argv
        else [venv_script("tandem"), "serve", "--host", "127.0.0.1", "--port", str(api_port)],
        s.work / "api.log",
        api_env,
    )
    s.services.append(api)
    ready_s = wait_http(f"{s.base_url}/readyz", api, s.cfg.startup_timeout_s, {"X-API-Key": s.key})
    if progress is not None and starting is not None:
        progress.update(starting, total=1, completed=1, description=f"API ready in {ready_s:.1f} s")
    readyz: Any = httpx.get(f"{s.base_url}/readyz", headers={"X-API-Key": s.key}, timeout=10).json()
    return api, ready_s, readyz


def _locust_runs(s: _Session, api: Service, progress: Progress | None) -> None:
    """The three Locust runs, ``/metrics`` scraped around each, with a CPU-quiet wait before each."""
    cfg = s.cfg
    ids_file = s.work / "ids.txt"
    locust_env = {
        **os.environ,
        ENV_IMAGE_BASE: s.image_base,
        ENV_IDS_FILE: str(ids_file),
        ENV_KEY: s.key,
        ENV_TOP_K: str(cfg.top_k),
    }
    specs = [
        LocustRun("single", 1, 1, (0.0, 0.0), cfg.single_s),
        LocustRun("think", cfg.users, cfg.spawn_rate, cfg.think_s, cfg.duration_s),
        LocustRun("saturation", cfg.users, cfg.spawn_rate, (0.0, 0.0), cfg.duration_s),
    ]
    before = scrape(s.base_url, s.key)
    for spec in specs:
        s.quiet[spec.name] = _quiet(cfg, progress, s.services)
        result = run_locust(spec, host=s.base_url, work=s.work, env=locust_env, services=s.services, progress=progress)
        after = scrape(s.base_url, s.key)
        result["metrics"] = metrics_delta(before, after) if after is not None else None
        s.runs[spec.name] = result
        before = after
        if not api.alive():
            raise LoadtestError(f"the API died during the {spec.name} run; its output:\n{tail(api.log)}")


def _config(s: _Session, raw: dict[str, Any], ready_s: float, readyz: Any, warm: Sequence[float]) -> dict[str, Any]:
    """The report's ``config``: what was run, against what, with which settings."""
    settings, cfg = s.settings, s.cfg
    return {
        "quick": cfg.quick,
        "ids": len(s.ids),
        "seed": cfg.seed,
        "top_k": cfg.top_k,
        "think_s": list(cfg.think_s),
        "images_dir": str(s.images_dir.resolve()),
        "index": settings.qdrant.url or str(settings.qdrant_dir.resolve()),
        "image_encoder": raw.get("model_id"),
        "device": settings.encoders.device,
        "mode": settings.retrieval.mode,
        "api": {
            k: getattr(settings.api, k)
            for k in ("batch_max_size", "batch_wait_ms", "max_in_flight", "deadline_s", "torch_threads")
        },
        "api_ready_s": round(ready_s, 1),
        "readyz": readyz,
        "warmup_ms": [round(t, 1) for t in warm],
        "spawn_rate": cfg.spawn_rate,
        "quiet_wait_s": cfg.quiet_wait_s,
    }


def _ratio(sat: float | None, raw: dict[str, Any], key: str) -> float | None:
    return round(sat / raw[key], 3) if sat is not None and raw.get(key) else None


def _measure_all(s: _Session, progress: Progress | None) -> dict[str, Any]:
    """Raw encoder, services, warm-up and the Locust runs; what the results need besides the runs."""

    cfg = s.cfg
    s.quiet["raw_encoder"] = _quiet(cfg, progress, s.services)
    raw = measure_encoder(
        s.settings, s.build_encoder, [s.images_dir / f"{i}.jpg" for i in s.ids], seconds=cfg.raw_s, progress=progress
    )
    machine = machine_info()
    _start_image_server(s)
    api, ready_s, readyz = _start_api(s, progress)
    rng = random.Random(cfg.seed)
    payloads = [build_payload(s.image_base, rng.choice(s.ids), cfg.top_k) for _ in range(cfg.warmup)]
    warm = warm_up(s.base_url, s.key, payloads, cfg.top_k)
    _locust_runs(s, api, progress)
    return {"raw": raw, "machine": machine, "ready_s": ready_s, "readyz": readyz, "warm": warm}


def run(
    settings: Settings,
    config: LoadtestConfig | None = None,
    *,
    build_encoder: Callable[[], ImageEncoder],
    reports_dir: Path = Path("eval/reports"),
    name: str = "api_loadtest",
    console: Console | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole load test (the package docstring); returns the results with ``report`` (the paths written).

    ``notes`` are lines added to the report's notes. ``build_encoder`` builds the image encoder
    as the service does, for the raw-encoder measurement (the CLI passes the service's builder).
    """
    cfg = config or LoadtestConfig()
    echo: Callable[[str], None] = console.print if console is not None else (lambda _msg: None)
    notes = list(notes)
    built = ensure_index(settings, cfg.index_limit, echo) if cfg.prepare_index else None
    if built:
        notes.append(f"The index was missing: `{built}` built it before the test.")
    ids = pick_ids(settings.catalogue.path / "images", cfg.ids, cfg.seed)
    s = _Session(settings, cfg, ids, Path(tempfile.mkdtemp(prefix="tandem-loadtest-")), build_encoder)
    (s.work / "ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    ok = False
    try:
        with progress_display(console) as progress:
            m = _measure_all(s, progress)
        end = scrape(s.base_url, s.key)
        ok = True
    finally:
        for service in reversed(s.services):
            service.stop()
        if ok:
            shutil.rmtree(s.work, ignore_errors=True)
        else:
            echo(f"logs kept in {s.work}")

    raw = m["raw"]
    sat = stat(s.runs, "saturation", "rps")
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": m["machine"],
        "reference": REFERENCE,
        "config": _config(s, raw, m["ready_s"], m["readyz"], m["warm"]),
        "quiet": s.quiet,
        "raw_encoder": raw,
        "runs": s.runs,
        "api_to_raw_ratio": _ratio(sat, raw, "images_per_s"),
        "api_to_raw_ratio_service_threads": _ratio(sat, raw, "service_threads_images_per_s"),
        "metrics_total": metrics_delta(None, end) if end is not None else None,
        "targets": evaluate_targets(s.runs, raw.get("images_per_s")),
        "notes": notes,
    }
    paths = write_report(results, reports_dir, name)
    results["report"] = {k: str(v) for k, v in paths.items()}
    return results
