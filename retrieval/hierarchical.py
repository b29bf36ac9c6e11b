"""Hierarchical retrieval: level 1 keeps the few categories that matter, level 2 searches only inside them.

Level 1 scores the query against every category (category-name text embeddings,
prototypes of the products' own vectors, both, several k-means prototypes per category, or
a learned linear head), mixes in the categories of the query's nearest products (a vote of
one cheap flat query: pseudo-relevance feedback), turns the result into calibrated
probabilities, and keeps categories by a policy. Level 2 is a Qdrant search with a
payload-index filter on the kept categories, re-scored with the category posterior as a
soft prior (similarity + beta * log P(category | query)).

Example:
    >>> h = HierarchicalRetriever(retriever, categories, Level1Config())  # doctest: +SKIP
    >>> result = h.search(SearchQuery(image=photo), k=10)  # doctest: +SKIP
    >>> result.searched_fraction  # doctest: +SKIP
    0.031
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from retrieval.categories import CategoryIndex, category_key
from retrieval.errors import RetrievalError
from retrieval.search import Retriever, SearchHit, SearchQuery
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR, SearchFilter

__all__ = [
    "EXPLORE_PER_CATEGORY",
    "HierarchicalRetriever",
    "Level1Config",
    "Level1Result",
    "SearchMode",
    "SearchResult",
    "calibrated",
    "level1_scores",
    "neighbour_vote",
    "score_categories",
    "select_categories",
]

SearchMode = Literal["hierarchical", "flat"]
EXPLORE_PER_CATEGORY = 1  # products each explored category adds to a pool: more categories, a broader tail


class Level1Config(BaseModel):
    """How level 1 scores categories and which it keeps.

    Policies: ``top_m`` keeps the m best; ``fraction`` keeps best-first until the kept
    categories hold ``target_fraction`` of the catalogue; ``mass`` keeps best-first until
    the calibrated probability mass reaches ``mass`` (never more than ``max_fraction`` of
    the catalogue); ``margin`` keeps every category within ``margin`` of the best score
    (same cap). The best category is always kept, however large.
    """

    # Defaults come from the sweep in eval/reports/level1_sweep.md (buyer-style photo queries, tuned on one half).
    representation: Literal["text", "prototype", "both", "clusters", "head"] = "both"
    policy: Literal["top_m", "fraction", "mass", "margin"] = "mass"
    top_m: int = Field(default=3, ge=1)
    target_fraction: float = Field(default=0.025, gt=0, le=1)
    mass: float = Field(default=0.99, gt=0, le=1)
    margin: float = Field(default=0.05, ge=0)
    max_fraction: float = Field(default=0.3, gt=0, le=1)
    temperature: float = Field(default=0.03, gt=0, description="Softmax temperature that calibrates scores.")
    text_weight: float = Field(default=0.85, ge=0, le=1, description="Weight of name embeddings vs prototypes.")
    clusters: int = Field(
        default=4,
        ge=1,
        le=16,
        description="k-means prototypes per category the index is built with (``clusters``: max-sim over them).",
    )
    neighbours: int = Field(
        default=50,
        ge=0,
        le=100,
        description="Flat hits whose categories vote (pseudo-relevance feedback); 0 = no vote.",
    )
    neighbour_temperature: float = Field(
        default=0.02, gt=0, description="A neighbour's vote is exp((similarity - best similarity) / this)."
    )
    neighbour_weight: float = Field(
        default=1.0, ge=0, le=1, description="P(category) = this * vote + (1 - this) * the representation's."
    )
    prior_weight: float = Field(
        default=0.05,
        ge=0,
        description="Level 2 re-scores hits by similarity + prior_weight * log P(category | query).",
    )
    candidates: int = Field(default=10, ge=1, description="Level 2 fetches candidates * k hits before re-scoring.")
    anchor_hits: int = Field(
        default=1,
        ge=0,
        description="Always keep the categories of this many nearest products (one cheap HNSW query), so a"
        " photo of a catalogue product never loses its own category to a level-1 miss.",
    )


@dataclass(frozen=True, slots=True)
class Level1Result:
    """The categories level 1 kept, with their probabilities and the share of the catalogue they hold."""

    kept: list[str]
    probabilities: list[float]
    searched: int
    total: int
    scores: np.ndarray | None = None  # every category's level-1 score (CategoryIndex order), for exploring beyond

    @property
    def searched_fraction(self) -> float:
        return self.searched / self.total if self.total else 0.0


@dataclass(slots=True)
class SearchResult:
    """Hits plus how they were found."""

    hits: list[SearchHit]
    mode: SearchMode
    level1: Level1Result | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)
    explored: int = 0  # the last ``explored`` hits come from categories level 1 left out (``explore``)

    @property
    def searched_fraction(self) -> float:
        return self.level1.searched_fraction if self.level1 else 1.0


def score_categories(
    vectors: dict[str, np.ndarray], categories: CategoryIndex, config: Level1Config, *, image_aligned: bool
) -> np.ndarray:
    """Score of the query against every category, averaged over the query's modalities.

    Cosine scores for names, prototypes and clusters (max over a category's prototypes);
    for ``head``, ``temperature * log P(category | image)`` of the learned head, so that
    :func:`calibrated` at the same temperature returns the head's own probabilities.
    Category-name embeddings live in the text encoder's space: a photo is compared with
    them only when the image tower was trained into that space (``image_aligned``).
    """
    per_modality = []
    for name, vec in vectors.items():
        if name == IMAGE_VECTOR and config.representation == "head":
            if categories.head is None:
                raise RetrievalError("level 1 asks for the learned head, but the category index was built without one")
            per_modality.append(config.temperature * categories.head.log_probs(vec))
            continue
        if name == IMAGE_VECTOR and config.representation == "clusters" and categories.cluster_image is not None:
            per_modality.append(_cluster_scores(vec, categories))
            continue
        proto = categories.proto_image if name == IMAGE_VECTOR else categories.proto_text
        s_proto = proto @ vec
        can_use_names = name == TEXT_VECTOR or image_aligned
        if config.representation in ("prototype", "clusters", "head") or not can_use_names:
            per_modality.append(s_proto)
            continue
        s_text = categories.text @ vec
        if config.representation == "text":
            per_modality.append(s_text)
        else:
            per_modality.append(config.text_weight * s_text + (1 - config.text_weight) * s_proto)
    scores: np.ndarray = np.mean(per_modality, axis=0)
    return scores


def _cluster_scores(vec: np.ndarray, categories: CategoryIndex) -> np.ndarray:
    """Each category's best similarity over its k-means prototypes (a multi-modal category matches any mode)."""
    assert categories.cluster_image is not None and categories.cluster_owner is not None
    out = np.full(len(categories.keys), -np.inf, dtype=np.float32)
    np.maximum.at(out, categories.cluster_owner, categories.cluster_image @ vec)
    return out


def neighbour_vote(hits: Sequence[SearchHit], categories: CategoryIndex, temperature: float) -> np.ndarray:
    """P(category) from the query's nearest products: each votes exp((its score - the best score) / temperature).

    Zero for categories no neighbour belongs to; uniform if there are no neighbours.
    """
    votes = np.zeros(len(categories.keys), dtype=np.float64)
    if not hits:
        return np.full(len(categories.keys), 1.0 / len(categories.keys))
    best = max(h.score for h in hits)
    for h in hits:
        i = categories.position.get(category_key(h.category, categories.depth))
        if i is not None:
            votes[i] += math.exp((h.score - best) / temperature)
    total = votes.sum()
    return votes / total if total > 0 else np.full(len(categories.keys), 1.0 / len(categories.keys))


def level1_scores(
    vectors: dict[str, np.ndarray],
    categories: CategoryIndex,
    config: Level1Config,
    *,
    image_aligned: bool,
    neighbours: Sequence[SearchHit] = (),
) -> np.ndarray:
    """The scores level 1 ranks and calibrates: the representation's, mixed with the neighbours' vote.

    Returned as ``temperature * log P`` (P the mixture), so ``calibrated(scores, temperature)`` is P
    exactly and a score difference is a log-odds ratio times the temperature. Without a vote they
    are the representation's scores shifted by a constant (same order, same probabilities).
    """
    scores = score_categories(vectors, categories, config, image_aligned=image_aligned)
    if config.neighbours == 0 or config.neighbour_weight == 0:
        return scores
    lam = config.neighbour_weight
    p = (1 - lam) * calibrated(scores, config.temperature) + lam * neighbour_vote(
        neighbours, categories, config.neighbour_temperature
    )
    out: np.ndarray = config.temperature * np.log(np.maximum(p, 1e-12))
    return out


def calibrated(scores: np.ndarray, temperature: float) -> np.ndarray:
    """P(category | query): a softmax of the level-1 scores at ``temperature``."""
    z = np.exp((scores - scores.max()) / temperature)
    probs: np.ndarray = z / z.sum()
    return probs


def select_categories(
    scores: np.ndarray,
    categories: CategoryIndex,
    config: Level1Config,
    *,
    min_products: int = 0,
    always: Sequence[str] = (),
) -> Level1Result:
    """Keep categories best-first under ``config``'s policy; scores are calibrated with a softmax.

    Whatever the policy, categories keep being added until they hold ``min_products`` products,
    so a search for k results is never starved by a small category. Categories in ``always``
    are kept in addition to the policy's choice.
    """
    order = np.argsort(-scores, kind="stable")
    probs = calibrated(scores, config.temperature)
    total = categories.total
    kept: list[int] = []
    size = 0
    cum = 0.0
    for rank, i in enumerate(order):
        if rank > 0 and size >= min_products:
            if config.policy == "top_m" and rank >= config.top_m:
                break
            if config.policy == "fraction" and size >= config.target_fraction * total:
                break
            if config.policy == "mass" and cum >= config.mass:
                break
            if config.policy == "margin" and scores[i] < scores[order[0]] - config.margin:
                break
            if config.policy in ("mass", "margin") and size + categories.sizes[i] > config.max_fraction * total:
                break
        kept.append(int(i))
        size += int(categories.sizes[i])
        cum += float(probs[i])
    for key in always:
        i = categories.position.get(key)
        if i is not None and i not in kept:
            kept.append(i)
            size += int(categories.sizes[i])
    return Level1Result(
        kept=[categories.keys[i] for i in kept],
        probabilities=[float(probs[i]) for i in kept],
        searched=size,
        total=total,
        scores=scores,
    )


class HierarchicalRetriever:
    """Two-level search on top of a :class:`~retrieval.search.Retriever`; ``mode="flat"`` is the baseline."""

    def __init__(self, retriever: Retriever, categories: CategoryIndex, config: Level1Config | None = None) -> None:
        self.retriever = retriever
        self.categories = categories
        self.config = config or Level1Config()
        # Category-name embeddings are in the text encoder's space; photos are comparable with
        # them only when the image tower was trained into that space.
        self.image_aligned = retriever.manifest.image_text_aligned
        if self.config.representation == "head" and categories.head is None:
            raise RetrievalError("level 1 asks for the learned head, but the category index was built without one")

    def _rescore(self, hits: list[SearchHit], l1: Level1Result) -> list[SearchHit]:
        """Fold level 1's calibrated category probability into each hit's score (a log prior)."""
        prob = dict(zip(l1.kept, l1.probabilities, strict=True))
        beta, depth = self.config.prior_weight, self.categories.depth
        rescored = [
            dataclasses.replace(
                h, score=h.score + beta * math.log(max(prob.get(category_key(h.category, depth), 0.0), 1e-6))
            )
            for h in hits
        ]
        return sorted(rescored, key=lambda h: -h.score)

    def level1(
        self,
        vectors: dict[str, np.ndarray],
        *,
        min_products: int = 0,
        always: Sequence[str] = (),
        neighbours: Sequence[SearchHit] = (),
    ) -> Level1Result:
        scores = level1_scores(
            vectors, self.categories, self.config, image_aligned=self.image_aligned, neighbours=neighbours
        )
        return select_categories(scores, self.categories, self.config, min_products=min_products, always=always)

    def search(
        self, query: SearchQuery, *, k: int = 10, mode: SearchMode = "hierarchical", explore: int = 0
    ) -> SearchResult:
        t0 = time.perf_counter()
        vectors = self.retriever.encode(query)
        t1 = time.perf_counter()
        result = self.search_vectors(vectors, k=k, mode=mode, filter=query.filter)
        result.hits = self.retriever.exact_first(query, result.hits, k)
        if explore > 0:
            self.add_explored(vectors, result, explore, filter=query.filter)
        result.timing_ms = {"encode": (t1 - t0) * 1000, **result.timing_ms}
        return result

    def add_explored(
        self, vectors: dict[str, np.ndarray], result: SearchResult, categories: int, *, filter: SearchFilter | None
    ) -> None:
        """Append :meth:`explore`'s tail to ``result`` and count it in ``result.explored``."""
        tail = self.explore(vectors, result, categories, filter=filter)
        result.hits += tail
        result.explored += len(tail)

    def explore(
        self,
        vectors: dict[str, np.ndarray],
        result: SearchResult,
        categories: int,
        *,
        per_category: int = EXPLORE_PER_CATEGORY,
        filter: SearchFilter | None = None,
    ) -> list[SearchHit]:
        """The best ``per_category`` products of each of the next ``categories`` categories level 1 did not keep.

        A pool for buyers without a precise target: the precise hits stay first, and a tail from
        neighbouring categories gives a ranker (or its sampling) something else to choose from.
        """
        if result.level1 is None or result.level1.scores is None:
            return []  # a flat search has no categories left out
        kept = set(result.level1.kept)
        scores = result.level1.scores
        probs = calibrated(scores, self.config.temperature)
        order = [int(i) for i in np.argsort(-scores, kind="stable") if self.categories.keys[i] not in kept]
        seen = {h.product_id for h in result.hits}
        base = filter or SearchFilter()
        beta = self.config.prior_weight
        tail: list[SearchHit] = []
        for i in order[:categories]:
            scoped = SearchFilter(categories=[self.categories.keys[i]], category_depth=self.categories.depth,
                                  category_prefix=base.category_prefix, attributes=base.attributes)  # fmt: skip
            # Scored as level 2 scores its hits (similarity + the category's log prior), so a pool's scores stay
            # comparable: a left-out category's products fall behind the kept ones they resemble.
            prior = beta * math.log(max(float(probs[i]), 1e-6)) if beta > 0 else 0.0
            tail += [dataclasses.replace(h, score=h.score + prior)
                     for h in self.retriever.search_vectors(vectors, k=per_category, filter=scoped)
                     if h.product_id not in seen]  # fmt: skip
        return sorted(tail, key=lambda h: -h.score)

    def search_vectors(
        self,
        vectors: dict[str, np.ndarray],
        *,
        k: int = 10,
        mode: SearchMode = "hierarchical",
        filter: SearchFilter | None = None,
    ) -> SearchResult:
        t0 = time.perf_counter()
        if mode == "flat":
            hits = self.retriever.search_vectors(vectors, k=k, filter=filter)
            return SearchResult(hits, "flat", None, {"search": (time.perf_counter() - t0) * 1000})
        anchors: list[str] = []
        nearest: list[SearchHit] = []
        n_near = max(self.config.anchor_hits, self.config.neighbours)
        if n_near > 0:  # one flat query serves both the anchors and the neighbours' vote
            nearest = self.retriever.search_vectors(vectors, k=n_near, filter=filter)
            anchors = [category_key(h.category, self.categories.depth) for h in nearest[: self.config.anchor_hits]]
        l1 = self.level1(vectors, min_products=k, always=anchors, neighbours=nearest[: self.config.neighbours])
        t1 = time.perf_counter()
        base = filter or SearchFilter()
        scoped = SearchFilter(
            categories=l1.kept,
            category_depth=self.categories.depth,
            category_prefix=base.category_prefix,
            attributes=base.attributes,
        )
        if self.config.prior_weight > 0:
            hits = self._rescore(
                self.retriever.search_vectors(vectors, k=k * self.config.candidates, filter=scoped), l1
            )
            hits = hits[:k]
        else:
            hits = self.retriever.search_vectors(vectors, k=k, filter=scoped)
        if len(hits) < k:
            # The kept categories ran dry (an attribute filter can thin them out): fill from the rest.
            seen = {h.product_id for h in hits}
            more = self.retriever.search_vectors(vectors, k=k + len(hits), filter=filter)
            hits += [h for h in more if h.product_id not in seen][: k - len(hits)]
        t2 = time.perf_counter()
        return SearchResult(hits, "hierarchical", l1, {"level1": (t1 - t0) * 1000, "search": (t2 - t0) * 1000})
