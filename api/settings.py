"""Tandem's one settings class: environment variables ``TANDEM_*``, nested sections with ``__``.

Built lazily by :func:`get_settings` (cached); tests call ``get_settings.cache_clear()``
after changing the environment, or pass a ``Settings`` object explicitly.

Example:
    >>> import os; os.environ["TANDEM_QDRANT__URL"] = "http://localhost:6333"  # doctest: +SKIP
    >>> get_settings().qdrant.url  # doctest: +SKIP
    'http://localhost:6333'
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from retrieval.catalogue import ColumnMapping
from retrieval.hierarchical import Level1Config, SearchMode
from retrieval.images import ImageLimits

__all__ = [
    "CatalogueSettings",
    "EncoderSettings",
    "QdrantSettings",
    "RetrievalSettings",
    "Settings",
    "get_settings",
]


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


class RetrievalSettings(BaseModel):
    """Search mode and level-1 (category) settings of hierarchical retrieval."""

    mode: SearchMode = "hierarchical"
    category_depth: int | None = Field(default=None, ge=0, description="Level-1 category depth; None = full path.")
    level1: Level1Config = Field(default_factory=Level1Config)


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

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def tower_dir(self) -> Path:
        """Where ``tandem train clip`` writes the domain image tower (the default image encoder once there)."""
        return self.models_dir / "image-tower"

    @property
    def qdrant_dir(self) -> Path:
        return self.home / "qdrant" / self.qdrant.collection


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    return Settings()
