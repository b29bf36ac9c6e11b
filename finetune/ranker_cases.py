"""SYNTHETIC buyers on disk and their ranking cases from Tandem's real retrieval.

Example:
    >>> buyers = ensure_buyers(catalogue, Path("var/data/buyers"), BuyerConfig())  # doctest: +SKIP
    >>> cases = build_cases(buyers, retrieval_search(retriever, catalogue), catalogue, "one_of_20")  # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

from finetune.buyers import Buyer, BuyerConfig, generate_buyers, load_buyers, save_buyers
from finetune.ranking_data import Protocol, RankingCase, make_case
from retrieval.catalogue import Catalogue
from retrieval.hierarchical import HierarchicalRetriever
from retrieval.images import ImageLimits, read_image_file
from retrieval.search import SearchQuery

__all__ = ["Search", "build_cases", "ensure_buyers", "retrieval_search"]

Search = Callable[[Buyer], list[str]]


def ensure_buyers(catalogue: Catalogue, folder: Path, config: BuyerConfig) -> dict[str, list[Buyer]]:
    """The SYNTHETIC buyers by split: read from ``folder``, or generated and written there first."""
    if not (folder / "test.jsonl").is_file():
        save_buyers(generate_buyers(catalogue, config), folder)
    return {split: load_buyers(folder, split) for split in ("train", "validation", "test")}


def retrieval_search(retriever: HierarchicalRetriever, catalogue: Catalogue, *, pool: int = 50) -> Search:
    """Hierarchical retrieval for a buyer's request: its words, and its photo when it sent one."""
    limits = ImageLimits()

    def search(buyer: Buyer) -> list[str]:
        image = None
        if buyer.query_image is not None:
            product = catalogue.get(buyer.query_image)
            if product is not None and product.image_path is not None and product.image_path.is_file():
                image = read_image_file(product.image_path, limits)
        result = retriever.search(SearchQuery(text=buyer.query_text, image=image), k=pool)
        return [hit.product_id for hit in result.hits]

    return search


def build_cases(
    buyers: Sequence[Buyer],
    search: Search,
    catalogue: Catalogue,
    protocol: Protocol | None,
    *,
    n_candidates: int = 20,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[RankingCase]:
    """One case per buyer (``protocol=None`` alternates the two protocols, as training mixes them)."""
    report = progress or (lambda stage, done, total: None)
    rng = random.Random(seed)
    cases: list[RankingCase] = []
    label = protocol or "mixed"
    for i, buyer in enumerate(buyers):
        hits = search(buyer)
        chosen: Protocol = protocol or ("one_of_20" if i % 2 else "full_list")
        case = make_case(buyer, hits, catalogue, protocol=chosen, n_candidates=n_candidates, rng=rng)
        if case is None and protocol is None:
            case = make_case(buyer, hits, catalogue, protocol="full_list", n_candidates=n_candidates, rng=rng)
        if case is not None and any(case.relevance.values()):
            cases.append(case)
        if i % 20 == 0 or i == len(buyers) - 1:
            report(f"retrieving candidates ({label})", i + 1, len(buyers))
    return cases
