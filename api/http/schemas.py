"""Request and response bodies of the HTTP API, named by role. Unknown fields are refused (422).

Example:
    >>> RecommendRequest(text="red kurta", top_k=5).top_k
    5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import combinations
from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, Json, model_validator

from llms.config import HTTP_URL_PATTERN
from retrieval.hierarchical import SearchMode

__all__ = [
    "BASE64_IMAGE_PATTERN",
    "HTTP_URL_PATTERN",
    "SSE_EVENT_SCHEMA",
    "STORAGE_PATH_PATTERN",
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
    "error_responses",
    "image_or_text_schema",
    "not_together_schema",
    "published",
]

MAX_TOP_K = 100

# The constraints below are published in the OpenAPI document as well as enforced, so that a client
# generated from the document (Java, say) sends what the service accepts.
# image_path: s3://bucket/key, or a key under the storage root (no scheme, no NUL).
STORAGE_PATH_PATTERN = r"^(s3://[^/\x00]+/[^\x00]+|[^:\x00]+)$"
# Standard base64 (padded), optionally as a data: URL; what decodes is then checked to be an image.
BASE64_IMAGE_PATTERN = (
    r"^(data:[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+(;[A-Za-z0-9.+-]+=[A-Za-z0-9.+-]+)*;base64,)?"
    r"([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
)
_NON_BLANK = r"\S"


def published(**keywords: Any) -> Callable[[dict[str, Any]], None]:
    """Field ``json_schema_extra``: string keywords shown on an optional field's string branch, not enforced here.

    The image fetcher refuses what they rule out with its own codes (400 ``url_not_allowed``, ``path_not_allowed``,
    ``bad_request``), so the document may be stricter than the service, never looser.
    """

    def update(schema: dict[str, Any]) -> None:
        for option in schema.get("anyOf", [schema]):
            if option.get("type") == "string":
                option.update(keywords)

    return update


def image_or_text_schema(sources: tuple[str, ...]) -> list[Any]:
    """JSON Schema of "at most one of ``sources``, and one of them or non-blank text" (``allOf`` members)."""
    given = [{"required": [name], "properties": {name: {"type": "string"}}} for name in sources]
    text = {"required": ["text"], "properties": {"text": {"type": "string", "pattern": _NON_BLANK}}}
    two = [
        {"required": [a, b], "properties": {a: {"type": "string"}, b: {"type": "string"}}}
        for a, b in combinations(sources, 2)
    ]
    return [{"anyOf": [*given, text]}, {"not": {"anyOf": two}}]


def not_together_schema(first: str, others: dict[str, str]) -> dict[str, Any]:
    """JSON Schema of "not ``first`` together with any of ``others``" (name → JSON type), an ``allOf`` member."""
    return {
        "not": {
            "anyOf": [
                {"required": [first, name], "properties": {first: {"type": "number"}, name: {"type": kind}}}
                for name, kind in others.items()
            ]
        }
    }


def _without_nulls(schema: dict[str, Any]) -> None:
    """Multipart has no null: an optional form field is one left out, so the document shows no null branch."""
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf")
        if not options:
            continue
        kept = [o for o in options if o.get("type") != "null"]
        if prop.get("default", "") is None:
            del prop["default"]
        if len(kept) == 1:
            del prop["anyOf"]
            prop.update(kept[0])
        # A JSON part (see the route's multipart encoding) is described by the schema of what it holds.
        if "contentSchema" in prop:
            prop.update(prop.pop("contentSchema"))
            prop.pop("contentMediaType", None)
            prop.pop("type", None)


def _upload_form_schema(schema: dict[str, Any]) -> None:
    _without_nulls(schema)
    schema["allOf"] = [not_together_schema("mmr_lambda", {"diversity": "number"})]


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
        description="Attribute name → accepted values, e.g. {'base_colour': ['Red', 'Maroon']}; the names are the"
        " catalogue's attribute fields (an unknown one is refused, 422, with the list).",
        examples=[{"base_colour": ["Red", "Maroon"], "usage": ["Ethnic"]}],
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
        description="Candidates retrieved before re-ranking (default top_k; 4×top_k with MMR); at least top_k.",
    )
    mmr_lambda: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="MMR re-ranking over the pool: 1 = relevance only, 0 = most diverse. Not with diversity.",
    )
    diversity: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Target diversity, mapped to knob settings by Tandem's calibration. Not with mmr_lambda.",
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
                {"text": "leather office bag for men", "filters": {"attributes": {"base_colour": ["Brown"]}}},
            ],
            # One image source at most, and an image or non-blank text; mmr_lambda or diversity, not both.
            "allOf": [
                *image_or_text_schema(("image_url", "image_path", "image_base64")),
                not_together_schema("mmr_lambda", {"diversity": "number"}),
            ],
        },
    )

    image_url: str | None = Field(
        default=None,
        max_length=4096,
        json_schema_extra=published(minLength=1, pattern=HTTP_URL_PATTERN),
        description="An http(s) URL of the photo.",
    )
    image_path: str | None = Field(
        default=None,
        max_length=1024,
        json_schema_extra=published(minLength=1, pattern=STORAGE_PATH_PATTERN),
        description="A key in shared storage: s3://bucket/key (when the service has S3 storage configured), or a"
        " path under the service's storage root.",
    )
    image_base64: str | None = Field(
        default=None,
        json_schema_extra=published(minLength=1, pattern=BASE64_IMAGE_PATTERN),
        description="The photo's bytes, base64 (or a data: URL).",
    )
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

    model_config = ConfigDict(extra="forbid", json_schema_extra=_upload_form_schema)

    file: UploadFile = Field(description="The buyer's photo (JPEG, PNG, WebP, ...).")
    filters: Json[RecommendFilters] | None = Field(
        default=None, description="RecommendFilters, as a JSON part (application/json)."
    )


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


# One Server-Sent Event as OpenAPI 3.1 describes a text/event-stream response: the schema of each event.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}},
}


def error_responses(descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=``: each status with the one error body and what it means on that route."""
    return {status: {"model": ErrorResponse, "description": text} for status, text in descriptions.items()}


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
