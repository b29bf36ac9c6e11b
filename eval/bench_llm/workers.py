"""The benchmark's worker processes and what they cost: :class:`WorkerPool`, the CPU meter, the dispatcher's log.

:class:`WorkerPool` starts the ``tandem worker --simulate`` processes on free loopback ports,
waits for them, SIGKILLs and restarts one on the same port, and stops them all;
:class:`CpuMeter` splits the CPU cores used over a window between this process, the workers,
other processes and the hypervisor; :func:`dispatcher_log` keeps the dispatcher's log lines
as data.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from eval.bench_llm.config import MODEL, BenchError, WorkerSpec
from eval.process import (
    Service,
    ServiceError,
    busy_and_steal_cpu_seconds,
    free_port,
    own_cpu_seconds,
    venv_script,
    wait_http,
)

__all__ = ["CpuMeter", "WorkerPool", "dispatcher_log"]


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.created, record.getMessage(), getattr(record, "worker", None)))


@contextlib.contextmanager
def dispatcher_log() -> Iterator[list[tuple[float, str, str | None]]]:
    """Keep the dispatcher's log lines ("llm worker out", "… back") as data, not printed over the progress bars."""
    logger = logging.getLogger("tandem.llms")
    handler = _ListHandler()
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class WorkerPool:
    """The ``tandem worker --simulate`` processes, by name, on free loopback ports (a restart keeps the port)."""

    def __init__(self, specs: Sequence[WorkerSpec], work: Path, seed: int) -> None:
        self.specs = {s.name: s for s in specs}
        self.ports = {s.name: free_port() for s in specs}
        self.seeds = {s.name: seed + i for i, s in enumerate(specs)}
        self.work = work
        self.services: dict[str, Service] = {}
        self._retired: list[Service] = []
        self._retired_cpu_s = 0.0
        self._spawned: Counter[str] = Counter()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/v1"

    def health_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/health"

    def capacity_rps(self, names: Sequence[str]) -> float:
        return sum(self.specs[n].capacity_rps for n in names)

    def _argv(self, name: str) -> list[str]:
        spec = self.specs[name]
        argv = [venv_script("tandem"), "worker", "--simulate", "--host", "127.0.0.1", "--port", str(self.ports[name])]
        argv += ["--served-name", MODEL, "--delay-model", spec.delay, "--seed", str(self.seeds[name])]
        if spec.slots is not None:
            argv += ["--slots", str(spec.slots)]
        if spec.prefix_cache is not None:
            argv += ["--prefix-cache", spec.prefix_cache]
        return argv

    def spawn(self, name: str) -> Service:
        """Start (or restart) a worker process; it answers ``/health`` a few seconds later."""
        self._spawned[name] += 1
        log = self.work / f"{name}-{self._spawned[name]}.log"
        service = Service(name, self._argv(name), log)
        self.services[name] = service
        return service

    def start_all(self) -> None:
        for name in self.specs:
            self.spawn(name)

    def wait_ready(self, timeout_s: float) -> dict[str, float]:
        """Block until every worker answers ``/health``; seconds since the call, per worker."""
        t0 = time.perf_counter()
        ready: dict[str, float] = {}
        for name, service in self.services.items():
            left = max(1.0, timeout_s - (time.perf_counter() - t0))
            try:
                wait_http(self.health_url(name), service, left)
            except ServiceError as exc:
                raise BenchError(str(exc)) from exc
            ready[name] = time.perf_counter() - t0
        return ready

    def kill(self, name: str) -> None:
        """SIGKILL, as a crashed GPU worker would vanish (no graceful shutdown, connections reset)."""
        service = self.services.pop(name)
        self._retired_cpu_s += service.cpu_seconds()  # read before it is gone, so the CPU total stays right
        with contextlib.suppress(ProcessLookupError):
            os.kill(service.pid, signal.SIGKILL)
        service.proc.wait(timeout=10)
        self._retired.append(service)

    def cpu_seconds(self) -> float:
        """CPU seconds used by every worker process so far, killed ones included."""
        return self._retired_cpu_s + sum(s.cpu_seconds() for s in self.services.values())

    def alive(self) -> list[Service]:
        return list(self.services.values())

    def stop_all(self) -> None:
        """SIGINT to every worker at once (they stop in parallel), then :meth:`Service.stop` escalates if needed."""
        for service in self.services.values():
            if service.alive():
                with contextlib.suppress(ProcessLookupError):
                    service.proc.send_signal(signal.SIGINT)
        for service in [*self.services.values(), *self._retired]:
            with contextlib.suppress(Exception):  # stop every one, whatever one of them does
                service.stop(grace_s=10.0)


class CpuMeter:
    """CPU cores used over an interval by this process (load generator + dispatcher), the workers, and the rest."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._start: tuple[float, float, float, float, float] | None = None

    def start(self) -> None:
        self._start = (time.perf_counter(), own_cpu_seconds(), self.pool.cpu_seconds(), *busy_and_steal_cpu_seconds())

    def stop(self) -> dict[str, float]:
        if self._start is None:
            return {}
        wall0, own0, workers0, busy0, steal0 = self._start
        wall = max(time.perf_counter() - wall0, 1e-9)
        own = own_cpu_seconds() - own0
        workers = self.pool.cpu_seconds() - workers0
        busy, steal = busy_and_steal_cpu_seconds()
        busy -= busy0
        return {
            "wall_s": wall,
            "driver_cores": own / wall,
            "workers_cores": workers / wall,
            "other_cores": max(busy - own - workers, 0.0) / wall,
            "machine_cores": busy / wall,
            "steal_cores": (steal - steal0) / wall,
        }
