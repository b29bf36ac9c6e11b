"""Subprocesses and CPU accounting shared by the benchmarks that start services (``eval.loadtest``, ``eval.bench_llm``).

It holds :class:`Service` (a subprocess in its own session, output to a log file, stopped by
escalating signals), :func:`wait_http` (poll a URL until it answers 200, with the log's tail
when the process dies), :func:`free_port`, :func:`venv_script`, :func:`tail`, the machine's and
this process's CPU seconds, :func:`wait_for_quiet` (wait for other processes to leave the CPU)
and :func:`progress_display` (a rich progress display, or nothing without a console).
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

__all__ = [
    "Service",
    "ServiceError",
    "busy_and_steal_cpu_seconds",
    "busy_cpu_seconds",
    "free_port",
    "own_cpu_seconds",
    "progress_display",
    "tail",
    "venv_script",
    "wait_for_quiet",
    "wait_http",
    "wait_llm_ready",
]


class ServiceError(RuntimeError):
    """A service could not be started or did not answer (a missing command, a process that died, a timeout)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (empty when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def venv_script(name: str) -> str:
    """``name`` next to the running interpreter (the project's .venv), else on PATH."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"cannot find the {name!r} command (run `make setup`)")
    return found


class Service:
    """A subprocess in its own session (Ctrl-C reaches only the driver), output to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and its children so far (0 once it is gone)."""

        try:
            proc = psutil.Process(self.proc.pid)
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
            return total
        except psutil.Error:
            return 0.0

    def thread_cpu_seconds(self) -> dict[int, tuple[str, float]]:
        """CPU time of each thread of the process so far: thread id → (thread name, seconds)."""

        try:
            threads = psutil.Process(self.proc.pid).threads()
        except psutil.Error:
            return {}
        out: dict[int, tuple[str, float]] = {}
        for t in threads:
            try:
                name = Path(f"/proc/{self.proc.pid}/task/{t.id}/comm").read_text(encoding="utf-8").strip()
            except OSError:
                name = "?"
            out[t.id] = (name, t.user_time + t.system_time)
        return out

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGINT (a graceful stop for uvicorn), then SIGTERM, then SIGKILL."""
        try:
            for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0)):
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=wait)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=5)
        finally:
            self._fh.close()


def _died_message(url: str, service: Service) -> str:
    log_tail = tail(service.log)
    hint = ""
    if "Can't init WAL" in log_tail or "WouldBlock" in log_tail:
        hint = (
            "\nThe embedded Qdrant Edge index is open in another process (a running `tandem serve`, "
            "`tandem index`, a test?): one process at a time can hold it. Stop it, or give this run "
            "another TANDEM_HOME."
        )
    return (
        f"{service.name} exited with code {service.proc.returncode} before {url} answered; "
        f"the end of its output ({service.log}):\n{log_tail}{hint}"
    )


def wait_http(url: str, service: Service, timeout_s: float, headers: Mapping[str, str] | None = None) -> float:
    """Poll ``url`` until it answers 200; seconds waited. Raises with the log's tail if the process dies."""

    t0 = time.perf_counter()
    last = "no answer"
    while True:
        if not service.alive():
            raise ServiceError(_died_message(url, service))
        try:
            resp = httpx.get(url, headers=dict(headers or {}), timeout=5.0)
            if resp.status_code == 200:
                return time.perf_counter() - t0
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{exc.__class__.__name__}: {exc}"
        if time.perf_counter() - t0 > timeout_s:
            raise ServiceError(
                f"{url} did not answer 200 within {timeout_s:.0f} s (last: {last}); "
                f"the end of {service.name}'s output ({service.log}):\n{tail(service.log)}"
            )
        time.sleep(0.5)


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O) since boot."""

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def busy_and_steal_cpu_seconds() -> tuple[float, float]:
    """CPU seconds the machine has been busy since boot (steal excluded), and the steal (the hypervisor's share)."""

    t = psutil.cpu_times()
    steal = float(getattr(t, "steal", 0.0))
    busy = t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return float(busy), steal


def own_cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    """User + system CPU seconds of this process (``RUSAGE_SELF``) or of its reaped children (``RUSAGE_CHILDREN``)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _ours() -> float:
    return own_cpu_seconds(resource.RUSAGE_SELF) + own_cpu_seconds(resource.RUSAGE_CHILDREN)


def wait_for_quiet(
    max_wait_s: float, *, threshold_cores: float = 0.25, window_s: float = 2.0, own: Sequence[Service] = ()
) -> dict[str, float]:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold_cores`` CPU cores.

    "Other" is everything but this process, its reaped children and the ``own`` services, over
    windows of ``window_s`` seconds. Returns ``waited_s`` and the last window's ``other_cores``.
    On a shared machine this keeps a neighbour's burst out of the measurements when it can.
    """
    t0 = time.perf_counter()
    while True:
        busy = busy_cpu_seconds()
        mine = _ours()
        services = sum(x.cpu_seconds() for x in own)
        start = time.perf_counter()
        time.sleep(window_s)
        elapsed = time.perf_counter() - start
        busy = busy_cpu_seconds() - busy
        mine = _ours() - mine
        services = sum(x.cpu_seconds() for x in own) - services
        other = max(busy - mine - services, 0.0) / elapsed
        waited = time.perf_counter() - t0
        if other < threshold_cores or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "other_cores": round(other, 2)}


@contextlib.contextmanager
def progress_display(console: Console | None, *, counts: bool = False) -> Iterator[Progress | None]:
    """A rich progress display on ``console`` (``counts``: with an N/M column), or ``None`` without a console."""

    if console is None:
        yield None
        return
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if counts:
        columns.append(MofNCompleteColumn())
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=console) as p:
        yield p


def wait_llm_ready(
    client: httpx.Client, timeout_s: float, *, alive: Callable[[], bool] = lambda: True, poll_s: float = 1.0
) -> None:
    """Until ``/readyz`` reports the LLM part up: the embedded worker converts and loads its model beside the API.

    Chat turns before that fall back to retrieval order, which is not what a chat benchmark measures.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200 and response.json().get("parts", {}).get("llm"):
            return
        if not alive():
            raise ServiceError("the API stopped before its LLM worker was up")
        time.sleep(poll_s)
    raise ServiceError(f"the embedded LLM worker was not up within {timeout_s:g} s")
