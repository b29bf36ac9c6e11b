"""``make run`` without LLM servers: Tandem's own worker, started beside the API, serving both models.

When ``TANDEM_LLM__WORKERS`` is empty, :func:`embedded_llm_worker` trains what is missing
(the small base model, then the LoRA ranker, with progress bars), starts ``tandem worker``
as a child process serving the base model as ``tandem-base`` and the adapter as
``tandem-ranker``, waits until it is healthy, and stops it when the API stops.

Example:
    >>> with embedded_llm_worker(settings) as worker:  # doctest: +SKIP
    ...     settings = settings.model_copy(update={"llm": settings.llm.model_copy(update={"workers": [worker]})})
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from api.console import CliError, out
from api.settings import Settings
from llms.config import WorkerConfig

__all__ = ["embedded_llm_worker"]


class EmbeddedWorkerError(CliError):
    """The embedded worker did not come up."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def embedded_llm_worker(
    settings: Settings, *, limit: int | None = None, timeout_s: float = 300.0
) -> Iterator[WorkerConfig]:
    """Train what is missing, start the worker process, yield its config; the process stops on exit."""
    from api.cli_train import run_train_ranker

    ranker = run_train_ranker(settings)  # trains the base model first when it is missing
    base = settings.base_model_dir
    port = _free_port()
    command = [sys.executable, "-m", "api.cli", "worker", "--port", str(port), "--model", str(base),
               "--served-name", settings.llm.explainer_model,
               "--adapter", f"{settings.llm.ranker_model}={ranker}"]  # fmt: skip
    out.print(f"starting the embedded LLM worker on 127.0.0.1:{port} ({settings.llm.explainer_model} + "
              f"{settings.llm.ranker_model})")  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        with out.status("waiting for the embedded LLM worker …"):
            while True:
                if process.poll() is not None:
                    reason = (process.stderr.read() if process.stderr else "").strip().splitlines()
                    raise EmbeddedWorkerError(f"the embedded LLM worker exited: {reason[-1] if reason else '?'}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise EmbeddedWorkerError(f"the embedded LLM worker was not healthy within {timeout_s:g} s")
                time.sleep(0.5)
        yield WorkerConfig(url=f"http://127.0.0.1:{port}/v1", name="embedded", max_concurrency=8)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
