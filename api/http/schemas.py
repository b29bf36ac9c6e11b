"""Request and response bodies of the HTTP API, named by role. Unknown fields are refused (422).

Example:
    >>> RecommendRequest(text="red kurta", top_k=5).top_k
    5
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, Json, model_validator

from retrieval.hierarchical import SearchMode

__all__ = [
    "DiversityInfo",
    "ErrorDetail",
    "ErrorResponse",
    "HealthResponse",
    "ReadinessResponse",
    "RecommendFilters",
    "RecommendRequest",
    "RecommendResponse",
    "RecommendUploadForm",
    "RecommendedItem",
    "StageTimings",
]

MAX_TOP_K = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendFilters(_Strict):
    """Restrict results to a category prefix and/or attribute values (any listed value matches)."""

    category_prefix: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description="Top-down category path prefix, e.g. ['Apparel', 'Topwear'].",
        examples=[["Apparel", "Topwear"]],
    )
    attributes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Attribute name → accepted values, e.g. {'colour': ['Red', 'Maroon']}.",
        examples=[{"colour": ["Red", "Maroon"], "usage": ["Ethnic"]}],
    )


class _QueryFields(_Strict):
    text: str | None = Field(
        default=None, max_length=2000, description="What the buyer asks for, in words.", examples=["red kurta"]
    )
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K, description="How many products to return.")
    mode: SearchMode = Field(
        default="hierarchical", description="hierarchical (categories first) or flat (whole catalogue, baseline)."
    )
    pool: int | None = Field(
        default=None,
        ge=1,
        le=500,
        description="Candidates retrieved before re-ranking (default top_k; 4×top_k with MMR).",
    )
    mmr_lambda: float | None = Field(
        default=None, ge=0.0, le=1.0, description="MMR re-ranking over the pool: 1 = relevance only, 0 = most diverse."
    )
    diversity: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Target diversity, mapped to knob settings by Tandem's calibration."
    )

    @model_validator(mode="after")
    def _one_diversity_knob(self) -> _QueryFields:
        if self.mmr_lambda is not None and self.diversity is not None:
            raise ValueError("give mmr_lambda or diversity, not both")
        if self.pool is not None and self.pool < self.top_k:
            raise ValueError(f"pool ({self.pool}) must be at least top_k ({self.top_k})")
        return self


class RecommendRequest(_QueryFields):
    """A recommendation query: at most one image source, text, or both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"image_path": "s3://buyer-photos/2024/06/123.jpg", "text": "same style in red", "top_k": 10},
                {"image_url": "https://cdn.example.com/photo.jpg", "top_k": 5, "mode": "flat"},
                {"text": "leather office bag for men", "filters": {"attributes": {"colour": ["Brown"]}}},
            ]
        },
    )

    image_url: str | None = Field(default=None, max_length=4096, description="An http(s) URL of the photo.")
    image_path: str | None = Field(
        default=None,
        max_length=1024,
        description="A key in shared storage: s3://bucket/key, or a path under the service's storage root.",
    )
    image_base64: str | None = Field(default=None, description="The photo's bytes, base64 (or a data: URL).")
    filters: RecommendFilters | None = None

    @model_validator(mode="after")
    def _one_source(self) -> RecommendRequest:
        sources = [n for n in ("image_url", "image_path", "image_base64") if getattr(self, n)]
        if len(sources) > 1:
            raise ValueError(f"give one image source, not {' and '.join(sources)}")
        if not sources and not (self.text and self.text.strip()):
            raise ValueError("a request needs an image (image_url, image_path or image_base64), text, or both")
        return self


class RecommendUploadForm(_QueryFields):
    """Multipart upload: the photo as the ``file`` part plus the JSON request's query fields."""

    file: UploadFile = Field(description="The buyer's photo.")
    filters: Json[RecommendFilters] | None = Field(default=None, description="RecommendFilters as a JSON string.")


class RecommendedItem(BaseModel):
    """One product card."""

    product_id: str
    name: str
    category: str = Field(description="Category path joined with ' > '.", examples=["Apparel > Topwear > Kurtas"])
    category_path: list[str]
    score: float
    image_url: str | None


class StageTimings(BaseModel):
    """Milliseconds per stage: fetch (download + decode), encode (incl. waiting for a batch), search, total."""

    fetch: float
    encode: float
    search: float
    total: float


class DiversityInfo(BaseModel):
    """How diverse the returned list is, and the knob settings that made it."""

    ild_image: float | None = Field(description="ILD@K on image embeddings: mean pairwise 1 − cosine.")
    ild_text: float | None = Field(description="ILD@K on text embeddings.")
    ild_category: float = Field(description="Mean pairwise category-tree distance (0 same category, 1 other branch).")
    distinct_categories: float = Field(description="Share of distinct category paths in the list.")
    settings: dict[str, Any] = Field(default_factory=dict, description="The knob settings used (pool, MMR λ, …).")


class RecommendResponse(BaseModel):
    """The top-K products for a query."""

    request_id: str
    mode: SearchMode
    items: list[RecommendedItem]
    timing_ms: StageTimings
    searched_fraction: float = Field(description="Share of the catalogue level 2 searched (1.0 in flat mode).")
    diversity: DiversityInfo


class ErrorDetail(BaseModel):
    code: str = Field(examples=["url_not_allowed"])
    message: str
    request_id: str | None


class ErrorResponse(BaseModel):
    """Every error answer has this shape."""

    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessResponse(BaseModel):
    """Ready once retrieval is (the REST API needs no LLM); ``parts`` says which parts serve now."""

    ready: bool
    parts: dict[str, bool] = Field(
        default_factory=dict,
        description='Each part: "retrieval" (encoders + index; gates readiness) and "llm" (a healthy worker serves'
        " both the ranker and the explainer; until then a chat turn answers with retrieval order and a plain"
        " sentence).",
        examples=[{"retrieval": True, "llm": False}],
    )
    detail: dict[str, Any] = Field(default_factory=dict)
