"""Bodies of ``POST /v1/chat``, named by role; unknown fields are refused (422), as everywhere in the API.

Example:
    >>> ChatRequest.model_validate({"message": {"text": "navy shirts"}}).top_k
    10
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.http.schemas import (
    BASE64_IMAGE_PATTERN,
    HTTP_URL_PATTERN,
    DiversityInfo,
    RecommendedItem,
    image_or_text_schema,
    not_together_schema,
    published,
)

__all__ = [
    "MAX_CHAT_TOP_K",
    "ChatBuyer",
    "ChatItem",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "ChatSampling",
    "DegradedPart",
]

MAX_CHAT_TOP_K = 20  # the ranker sees at most 20 candidates


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Strict):
    """The buyer's message: words, a photo (one source), or both."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"allOf": image_or_text_schema(("image_url", "image_base64"))}
    )

    text: str | None = Field(default=None, max_length=2000, examples=["navy formal shirts for men"])
    image_url: str | None = Field(
        default=None,
        max_length=4096,
        json_schema_extra=published(minLength=1, pattern=HTTP_URL_PATTERN),
        description="An http(s) URL of the photo.",
    )
    image_base64: str | None = Field(
        default=None,
        json_schema_extra=published(minLength=1, pattern=BASE64_IMAGE_PATTERN),
        description="The photo's bytes, base64 (or a data: URL).",
    )

    @model_validator(mode="after")
    def _something(self) -> ChatMessage:
        if self.image_url and self.image_base64:
            raise ValueError("give one image source, not image_url and image_base64")
        if not (self.text and self.text.strip()) and not self.image_url and not self.image_base64:
            raise ValueError("a message needs text, a photo (image_url or image_base64), or both")
        return self


class ChatBuyer(_Strict):
    """What the platform knows about the buyer; a buyer without history gets a cold-start step."""

    id: str | None = Field(default=None, max_length=128)
    profile: str | None = Field(
        default=None, max_length=500, examples=["boutique in Western Europe, customers aged 25-34, buys for Women"]
    )
    history: list[str] = Field(default_factory=list, max_length=100, description="Catalogue ids of past orders.")


class ChatSampling(_Strict):
    """The ranker's sampling knobs for this turn."""

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1, le=1000)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


class ChatRequest(_Strict):
    """One turn of a recommendation conversation."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"message": {"text": "navy formal shirts for men"}, "top_k": 5},
                {"session_id": "3f2a…", "message": {"text": "in blue, not this brand"}, "stream": True},
                {
                    "message": {"image_url": "https://cdn.example.com/photo.jpg", "text": "like this, for women"},
                    "buyer": {"profile": "boutique in Western Europe", "history": ["15970"]},
                    "sampling": {"temperature": 0.7, "top_p": 0.9, "seed": 1},
                },
            ],
            # diversity sets the knobs itself: not with sampling or mmr_lambda.
            "allOf": [not_together_schema("diversity", {"sampling": "object", "mmr_lambda": "number"})],
        },
    )

    session_id: str | None = Field(default=None, max_length=64, description="Continue this session; omit to start.")
    message: ChatMessage
    buyer: ChatBuyer | None = None
    top_k: int = Field(default=10, ge=1, le=MAX_CHAT_TOP_K)
    sampling: ChatSampling | None = None
    candidates: int | None = Field(
        default=None, ge=2, le=26, description="How many candidates the ranker sees; at least top_k."
    )
    explore: int | None = Field(
        default=None, ge=0, le=20,
        description="Nearby categories (ones retrieval left out) whose best product joins the candidates, after the"
        " precise hits: a broader choice for buyers without a precise target. Below candidates.",
    )  # fmt: skip
    mmr_lambda: float | None = Field(
        default=None, ge=0.0, le=1.0, description="MMR over the ranked list: 1 = the ranker's order, 0 = most diverse."
    )
    diversity: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Target diversity, mapped to knob settings by Tandem's calibration."
    )
    stream: bool = Field(default=False, description="Server-Sent Events: candidates, ranking, token…, done, error.")

    @model_validator(mode="after")
    def _one_diversity_knob(self) -> ChatRequest:
        if self.diversity is not None and (self.mmr_lambda is not None or self.sampling is not None):
            raise ValueError("give diversity, or sampling / mmr_lambda, not both")
        if self.candidates is not None and self.candidates < self.top_k:
            raise ValueError(f"candidates ({self.candidates}) must be at least top_k ({self.top_k})")
        if self.explore and self.candidates is not None and self.explore >= self.candidates:
            raise ValueError(f"explore ({self.explore}) must be below candidates ({self.candidates})")
        return self


class ChatItem(RecommendedItem):
    """A product card, with why it was ranked where it is."""

    reason: str | None = None


class DegradedPart(BaseModel):
    """A part of the turn that fell back (ranker → retrieval order, explainer → a plain sentence), and why."""

    part: str = Field(examples=["ranker"])
    reason: str


class ChatResponse(BaseModel):
    """A whole turn: the ranked products and the explanation."""

    session_id: str
    request_id: str
    query: str = Field(description="The key product terms the turn searched for.")
    items: list[ChatItem]
    explanation: str
    degraded: list[DegradedPart]
    timing_ms: dict[str, float]
    diversity: DiversityInfo
