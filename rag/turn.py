"""What a conversation turn takes and gives: the request, its candidates, the result and the events in between.

The pipeline (:mod:`rag.pipeline`) runs a turn; the HTTP chat service, the CLI and eval build
:class:`TurnRequest` s and read :class:`TurnResult` s. :class:`PipelineConfig` is the one
typed home of a turn's sizes, caps and deadlines: the service's settings hold it as they are
(``TANDEM_CHAT__…``), with no copy.

Example:
    >>> TurnRequest(text="navy shirts for men", top_k=5).top_k
    5
    >>> PipelineConfig().ranker_candidates
    20
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from retrieval.catalogue import Product
from retrieval.hierarchical import SearchResult
from retrieval.store import SearchFilter

__all__ = [
    "BuyerContext",
    "CandidatesEvent",
    "Degradation",
    "DoneEvent",
    "Lookup",
    "PipelineConfig",
    "RankedProduct",
    "RankingEvent",
    "ReviseEvent",
    "Sampling",
    "Scored",
    "Search",
    "TokenEvent",
    "TurnEvent",
    "TurnModels",
    "TurnRequest",
    "TurnResult",
    "Vectors",
    "scored_hits",
]


@dataclass(frozen=True)
class Scored:
    """A retrieved product and its retrieval score."""

    product: Product
    score: float
    explored: bool = False  # from a category retrieval's level 1 left out (a broader choice), not a precise hit


def scored_hits(result: SearchResult) -> list[Scored]:
    """A retrieval result as the pipeline's candidates: the explored categories' products are the tail."""
    first_explored = len(result.hits) - result.explored
    return [Scored(Product(h.product_id, h.title, tuple(h.category), dict(h.attributes),
                           Path(h.image) if h.image else None), h.score, explored=i >= first_explored)
            for i, h in enumerate(result.hits)]  # fmt: skip


class Search(Protocol):
    """Retrieval as the pipeline calls it: ``k`` precise hits, then ``explore`` nearby categories' best products."""

    def __call__(
        self, text: str | None, image: Image.Image | None, k: int, search_filter: SearchFilter | None, /, *,
        explore: int = 0,
    ) -> Awaitable[list[Scored]]: ...  # fmt: skip


Vectors = Callable[[Sequence[str]], Awaitable[Mapping[str, np.ndarray]]]
Lookup = Callable[[Sequence[str]], Mapping[str, Product]]


@dataclass(frozen=True)
class Sampling:
    """The ranker's per-request sampling knobs (None: the server's default)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    def payload(self) -> dict[str, Any]:
        return {k: v for k, v in (("temperature", self.temperature), ("top_p", self.top_p), ("top_k", self.top_k),
                                  ("seed", self.seed)) if v is not None}  # fmt: skip


@dataclass(frozen=True)
class BuyerContext:
    """What the platform knows about the buyer (all optional)."""

    buyer_id: str | None = None
    profile: str | None = None
    history: tuple[str, ...] = ()


@dataclass(frozen=True)
class TurnRequest:
    """One buyer message (words, a photo or both) in a session."""

    text: str | None = None
    image: Image.Image | None = None
    session_id: str | None = None
    buyer: BuyerContext | None = None
    top_k: int = 10
    sampling: Sampling = field(default_factory=Sampling)
    candidates: int | None = None  # how many the ranker sees (default: the pipeline's ranker_candidates)
    mmr_lambda: float | None = None  # MMR over the ranked list, on image vectors (None: the ranker's order)
    explore: int = 0  # nearby categories whose best product joins the candidates, after the precise hits
    owner: str | None = None  # the caller the session belongs to (an API key's id, never the key)


class PipelineConfig(BaseModel):
    """A turn's pool sizes, caps and deadlines (``TANDEM_CHAT__…`` in the service's settings)."""

    model_config = ConfigDict(frozen=True)

    pool: int = Field(default=40, ge=1, le=500, description="Products retrieved per turn before filtering.")
    ranker_candidates: int = Field(default=20, ge=1, le=26, description="Candidates the ranker sees.")
    max_tool_rounds: int = Field(default=3, ge=1, le=10)
    ranker_max_tokens: int = Field(default=160, ge=16, le=4096)
    ranker_deadline_s: float = Field(default=20.0, gt=0)
    # The shipped ranker alone beats retrieval order (eval/reports/ranker_eval.md: NDCG@10 +85 % 1-of-20, +7.0 %
    # full list) and beats its fusion with retrieval order (+62 % / +3.8 %), so it is served alone by default.
    ranker_fusion: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="The LLM ranker's share when its order is fused with retrieval order (RRF); 1: the ranker alone.",
    )
    explainer_max_tokens: int = Field(default=40, ge=8, le=2048, description="Per explanation sentence.")
    explainer_deadline_s: float = Field(default=30.0, gt=0)
    explained: int = Field(default=3, ge=1, le=10, description="Products the explanation is about, a sentence each.")
    stream_words: bool = Field(
        default=True,
        description="Show each explanation sentence word by word as far as its check passes (false: only once the"
        " whole sentence is written and checked).",
    )
    history_shown: int = Field(default=6, ge=0, le=50)
    cold_start_topics: int = Field(default=4, ge=1, le=10)


@dataclass(frozen=True)
class TurnModels:
    """The served model names of the turn's two LLM roles."""

    ranker: str = "tandem-ranker"
    explainer: str = "tandem-base"


@dataclass(frozen=True)
class Degradation:
    """A part of the turn that fell back, and why."""

    part: str
    reason: str


@dataclass(frozen=True)
class RankedProduct:
    """A product in the final list: retrieval score and, when the ranker placed it, its rank reason."""

    product: Product
    score: float
    reason: str | None = None


@dataclass(frozen=True)
class TurnResult:
    """Everything a turn produced."""

    session_id: str
    query: str
    items: list[RankedProduct]
    explanation: str
    degraded: list[Degradation]
    timing_ms: dict[str, float]
    ranker: dict[str, Any]
    # What the explainer wrote: "sentences" shown, "model_sentences" of them in its own words, "raw" (each sentence
    # as the model wrote it, before the check; None where it failed), "replaced" (the check's reasons) and "retracted"
    # (sentences shown in part as they were written, then taken back: they failed the check at their end).
    explainer: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CandidatesEvent:
    session_id: str
    query: str
    candidates: list[Scored]


@dataclass(frozen=True)
class RankingEvent:
    items: list[RankedProduct]
    degraded: list[Degradation]


@dataclass(frozen=True)
class TokenEvent:
    text: str


@dataclass(frozen=True)
class ReviseEvent:
    """The explanation so far is now ``text``: a sentence shown while it was written failed its check at its end."""

    text: str


@dataclass(frozen=True)
class DoneEvent:
    result: TurnResult


TurnEvent = CandidatesEvent | RankingEvent | TokenEvent | ReviseEvent | DoneEvent
