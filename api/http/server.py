"""Run the HTTP service with uvicorn (``tandem serve``).

Without API keys the service binds loopback only, whatever host was asked for, and says so:
an unauthenticated recommender must not be reachable from the network by accident.
"""

from __future__ import annotations

import logging

from api.console import out
from api.http.app import create_app
from api.http.ssrf import is_loopback
from api.logs import configure_logging
from api.settings import Settings

__all__ = ["effective_host", "serve"]

log = logging.getLogger("tandem.api")


def effective_host(settings: Settings, host: str) -> tuple[str, str | None]:
    """The host to bind, and a notice when it differs from the one asked for."""
    if settings.api.keyed or is_loopback(host):
        return host, None
    return "127.0.0.1", (
        f"no API keys configured (TANDEM_API__KEYS): listening on 127.0.0.1 only, not {host}."
        " Set keys to serve the network."
    )


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
    uvicorn.run(
        create_app(settings),
        host=bind,
        port=port,
        log_config=None,
        access_log=False,  # the service middleware writes one JSON access line per request
        timeout_graceful_shutdown=10,
        server_header=False,
    )
