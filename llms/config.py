"""Configuration of the LLM dispatcher and of its workers (plain pydantic; the API's settings embed these).

Example:
    >>> WorkerConfig(url="http://127.0.0.1:9001/v1", models=["tandem-base"]).name
    '127.0.0.1:9001'
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["HTTP_URL_PATTERN", "BalancingPolicy", "DispatcherConfig", "WorkerConfig"]

_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
# An http(s) URL with a host name or IPv4 address, an optional port and printable ASCII after it: published in
# the OpenAPI document so that a generated client sends what the service accepts (and what httpx can parse:
# a pattern cannot tell a valid IPv6 literal from an invalid one, so those are left out).
_TOKEN = r"^[!-~]+$"  # a header value: printable ASCII, no spaces
HTTP_URL_PATTERN = rf"^https?://[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:{_PORT})?([/?#][!-~]*)?$"


class BalancingPolicy(StrEnum):
    """How the dispatcher picks among the workers that have a free slot."""

    ROUND_ROBIN = "round_robin"
    LEAST_OUTSTANDING = "least_outstanding"
    POWER_OF_TWO = "power_of_two"
    AFFINITY = "affinity"  # sticky by session (prefix caches), power of two as the fallback


class WorkerConfig(BaseModel):
    """One OpenAI-compatible server: vLLM, ollama (``…/v1``) or Tandem's embedded worker."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        pattern=HTTP_URL_PATTERN,
        description="Base URL of the OpenAI API, e.g. http://vllm:8000/v1 or http://ollama:11434/v1.",
    )
    name: str = Field(default="", description="Label in metrics and logs; defaults to host:port.")
    models: list[str] = Field(
        default_factory=list,
        description="Model and adapter names it serves; empty: read from its /v1/models once it is healthy.",
    )
    max_concurrency: int = Field(default=8, gt=0, description="Requests the dispatcher keeps in flight on it.")
    weight: float = Field(default=1.0, gt=0, description="Relative capacity (a bigger GPU gets a bigger weight).")
    api_key: SecretStr | None = Field(
        default=None, json_schema_extra={"pattern": _TOKEN}, description="Bearer token (printable ASCII)."
    )
    health_url: str | None = Field(
        default=None,
        pattern=HTTP_URL_PATTERN,
        description="Liveness URL; default: /health at the server root (ollama: use /api/version).",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"worker url must be http(s)://host[:port]/…, got {value!r}")
        return value.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(_TOKEN, value.get_secret_value()):
            raise ValueError("api_key must be printable ASCII without spaces (it is sent in a header)")
        return value

    @model_validator(mode="after")
    def _default_name(self) -> Self:
        if not self.name:
            self.name = urlsplit(self.url).netloc
        return self

    @property
    def chat_url(self) -> str:
        return f"{self.url}/chat/completions"

    @property
    def models_url(self) -> str:
        return f"{self.url}/models"

    @property
    def liveness_url(self) -> str:
        if self.health_url:
            return self.health_url
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}/health"


class DispatcherConfig(BaseModel):
    """Queue, deadlines, retries, health checks and breakers of the one LLM dispatcher."""

    model_config = ConfigDict(extra="forbid")

    policy: BalancingPolicy = BalancingPolicy.POWER_OF_TWO
    max_queue: int = Field(default=256, ge=0, description="Requests waiting for a worker; beyond it: overload error.")
    batch_queue_fraction: float = Field(
        default=0.5, gt=0, le=1, description="Share of the queue batch work may fill, so chat always finds room."
    )
    interactive_deadline_s: float = Field(default=30.0, gt=0)
    batch_deadline_s: float = Field(default=300.0, gt=0)
    first_token_timeout_s: float = Field(
        default=15.0, gt=0, description="A worker silent this long before its first token is given up (and retried)."
    )
    stream_idle_timeout_s: float = Field(default=15.0, gt=0, description="Longest gap between two streamed chunks.")
    connect_timeout_s: float = Field(default=2.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, description="Tries per request, each on another worker if one exists.")
    health_interval_s: float = Field(default=1.0, gt=0)
    health_timeout_s: float = Field(default=1.0, gt=0)
    unhealthy_after: int = Field(default=2, ge=1, description="Failed health checks in a row that take a worker out.")
    breaker_threshold: int = Field(default=5, ge=1, description="Failures in a row that open a worker's breaker.")
    breaker_reset_s: float = Field(default=10.0, gt=0, description="How long an open breaker waits before one probe.")
    latency_decay_s: float = Field(default=10.0, gt=0, description="Time constant of the per-worker latency EWMA.")
