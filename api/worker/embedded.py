"""``make run`` without LLM servers: Tandem's own worker, started beside the API, serving both models.

When ``TANDEM_LLM__WORKERS`` is empty, :func:`embedded_llm_worker` starts ``tandem worker`` as a
child process serving the base model (``TANDEM_LLM__BASE``, converted once on its first start)
as ``tandem-base`` and the ranker adapter as ``tandem-ranker``, and returns at once: the API does
not wait for it. The dispatcher's health checks bring the worker in when it answers; until then
``/readyz`` reports ``"llm": false`` and a chat turn answers with retrieval order and a plain
sentence, saying so in ``degraded``. The REST recommendation API needs no LLM at all. The
worker's output goes to ``TANDEM_HOME/logs/embedded-worker.log``; if it exits, one line says why.

Example:
    >>> with embedded_llm_worker(settings) as worker:  # doctest: +SKIP
    ...     settings = settings.model_copy(update={"llm": settings.llm.model_copy(update={"workers": [worker]})})
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from api.console import err, out
from api.settings import Settings
from llms.config import WorkerConfig

__all__ = ["embedded_llm_worker", "worker_command"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_command(settings: Settings, port: int) -> list[str]:
    """The ``tandem worker`` command line of the embedded worker."""
    return [sys.executable, "-m", "api.cli.main", "worker", "--port", str(port), "--model", settings.llm.base,
            "--served-name", settings.llm.explainer_model,
            "--adapter", f"{settings.llm.ranker_model}={settings.ranker_adapter_dir()}",
            "--device", settings.llm.device, "--dtype", settings.llm.dtype,
            "--prefix-cache-tokens", str(settings.llm.prefix_cache_tokens), "--exit-with-parent"]  # fmt: skip


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "?"
    return lines[-1] if lines else "?"


def _watch(process: subprocess.Popen[bytes], log: Path, stopping: threading.Event) -> None:
    code = process.wait()
    if not stopping.is_set():
        err.print(f"the embedded LLM worker exited ({code}): {_last_line(log)} (full log: {log}); the chat serves "
                  "retrieval order and plain sentences", markup=False, highlight=False)  # fmt: skip


@contextmanager
def embedded_llm_worker(settings: Settings) -> Iterator[WorkerConfig]:
    """Start the worker process and yield its config at once; the process stops on exit."""
    port = _free_port()
    log = settings.home / "logs" / "embedded-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    llm = settings.llm
    out.print(f"starting the embedded LLM worker on 127.0.0.1:{port} ({llm.explainer_model} on {llm.base} + "
              f"{llm.ranker_model}); the API does not wait for it (log: {log})")  # fmt: skip
    stopping = threading.Event()
    with log.open("ab") as sink:
        # In its own session: Ctrl-C or a signal to the API's process group must not stop the worker while the
        # API drains turns that still call it; the API stops it below, and --exit-with-parent if the API dies.
        process = subprocess.Popen(
            worker_command(settings, port), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    threading.Thread(target=_watch, args=(process, log, stopping), name="embedded-worker-watch", daemon=True).start()
    try:
        yield WorkerConfig(url=f"http://127.0.0.1:{port}/v1", name="embedded", max_concurrency=8)
    finally:
        stopping.set()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
