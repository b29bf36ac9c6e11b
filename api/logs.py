"""Structured JSON logs; every record made while serving a request carries its ``request_id``.

Example:
    >>> configure_logging("INFO")  # doctest: +SKIP
    >>> logging.getLogger("tandem.api").info("ready")  # doctest: +SKIP
    {"time": "...", "level": "INFO", "logger": "tandem.api", "message": "ready", "request_id": null}
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

__all__ = ["LOGGERS", "configure_logging", "request_id_var"]

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


LOGGERS = ("tandem", "uvicorn", "uvicorn.error")


def _drop_colour(record: logging.LogRecord) -> bool:
    # uvicorn attaches an ANSI-coloured copy of its messages; it is noise in JSON.
    record.__dict__.pop("color_message", None)
    return True


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route Tandem's and uvicorn's logs to ``stream`` (stderr) as one JSON object per line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    handler.addFilter(_RequestIdFilter())
    handler.addFilter(_drop_colour)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
