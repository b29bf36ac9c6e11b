"""Run the HTTP service with uvicorn (``tandem serve``).

Without API keys the service binds loopback only, whatever host was asked for, and says so:
an unauthenticated recommender must not be reachable from the network by accident.

SIGTERM is a clean stop (a rolling restart loses no request): ``/readyz`` answers 503 at once,
new connections are refused (after ``TANDEM_API__SHUTDOWN_DELAY_S``, 0 by default), requests and
SSE streams in flight finish within ``TANDEM_API__SHUTDOWN_GRACE_S`` (uvicorn's graceful shutdown),
the lifespan closes the resources, and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from fastapi import FastAPI

from api.console import out
from api.http.app import create_app
from api.http.ssrf import is_loopback
from api.logs import configure_logging
from api.settings import Settings

if TYPE_CHECKING:
    import uvicorn

__all__ = ["effective_host", "graceful_server", "serve"]

log = logging.getLogger("tandem.api")

_STARTUP_FAILURE = 3  # uvicorn.main.STARTUP_FAILURE


def effective_host(settings: Settings, host: str) -> tuple[str, str | None]:
    """The host to bind, and a notice when it differs from the one asked for."""
    if settings.api.keyed or is_loopback(host):
        return host, None
    return "127.0.0.1", (
        f"no API keys configured (TANDEM_API__KEYS): listening on 127.0.0.1 only, not {host}."
        " Set keys to serve the network."
    )


def _mark_draining(app: FastAPI) -> None:
    resources = getattr(app.state, "resources", None)
    if resources is not None:  # still starting: /readyz already answers 503
        resources.draining = True


def graceful_server(
    app: FastAPI, config: uvicorn.Config, *, delay_s: float = 0.0, clock: Callable[[], float] = time.monotonic
) -> uvicorn.Server:
    """A uvicorn server that drains ``app`` on SIGTERM and then returns normally (the process exits 0).

    ``delay_s`` keeps the listener open that long after the signal, ``/readyz`` answering 503 meanwhile.

    Example:
        >>> config = uvicorn.Config(app, port=8000, timeout_graceful_shutdown=30)  # doctest: +SKIP
        >>> graceful_server(app, config, delay_s=5.0).run()  # doctest: +SKIP
    """
    import uvicorn  # noqa: PLC0415 - lazy: the CLI imports this module for every command; uvicorn only when serving

    class GracefulServer(uvicorn.Server):
        """uvicorn's graceful shutdown, with readiness dropped first and SIGTERM not re-raised at the end.

        uvicorn re-raises a handled signal once it has shut down, so a SIGTERM'd service would die by the
        signal (exit 143) and skip the ``finally`` blocks around it, the embedded LLM worker's stop among them.
        """

        def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None], delay_s: float) -> None:
            super().__init__(config)
            self._on_drain = on_drain
            self._delay_s = delay_s
            self._stop_at: float | None = None
            self._announced = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            self._on_drain()  # a plain attribute write: safe in a signal handler
            if sig != signal.SIGTERM:
                super().handle_exit(sig, frame)  # Ctrl-C as uvicorn has it: a second one forces the exit
            elif self._stop_at is None:
                self._stop_at = clock() + self._delay_s
                self.should_exit = self._delay_s <= 0

        async def on_tick(self, counter: int) -> bool:
            if self._stop_at is not None and not self._announced:
                self._announced = True  # logged here, not in the signal handler, which may interrupt a log write
                log.info("draining: /readyz answers 503; new connections are refused in %s s", self._delay_s)
            if self._stop_at is not None and not self.should_exit and clock() >= self._stop_at:
                self.should_exit = True
            return await super().on_tick(counter)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            log.info("shutting down: new connections are refused; requests in flight may take up to %s s",
                     self.config.timeout_graceful_shutdown)  # fmt: skip
            await super().shutdown(sockets)

    return GracefulServer(config, lambda: _mark_draining(app), delay_s)


def serve(settings: Settings, host: str, port: int, *, log_level: str = "INFO") -> None:
    import uvicorn  # noqa: PLC0415 - lazy: the CLI imports this module for every command; uvicorn only when serving

    bind, notice = effective_host(settings, host)
    configure_logging(log_level)
    if notice:
        out.print(f"[yellow]{notice}[/yellow]")
    elif not settings.api.keyed:
        out.print("no API keys configured (TANDEM_API__KEYS): serving loopback clients only")
    shown = f"[{bind}]" if ":" in bind else bind
    out.print(f"web chat: [bold]http://{shown}:{port}/[/bold]   API docs: [bold]http://{shown}:{port}/docs[/bold]"
              "   (OpenAPI: /openapi.json)")  # fmt: skip
    out.print("loading encoders and the index …")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=bind,
        port=port,
        log_config=None,
        access_log=False,  # the service middleware writes one JSON access line per request
        timeout_graceful_shutdown=settings.api.shutdown_grace_s,
        server_header=False,
    )
    server = graceful_server(app, config, delay_s=settings.api.shutdown_delay_s)
    server.run()
    if not server.started:
        raise SystemExit(_STARTUP_FAILURE)  # as uvicorn.run does: the port was taken, or the lifespan failed
    log.info("stopped")
