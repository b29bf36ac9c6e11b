"""search_batch (one encoder call per modality for many queries) answers exactly as one-by-one search does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.batch_search import BatchQuery, search_batch
from retrieval.errors import InvalidQueryError
from retrieval.images import ImageLimits, read_image_file
from retrieval.search import SearchQuery


def test_batch_equals_one_by_one(client: Any, small_catalogue_dir: Path) -> None:
    retriever = client.app.state.resources.retriever
    photos = [read_image_file(p, ImageLimits()) for p in sorted((small_catalogue_dir / "images").glob("*.jpg"))[:4]]
    queries = [
        BatchQuery(SearchQuery(text="red kurta"), k=5),
        BatchQuery(SearchQuery(image=photos[0]), k=3, mode="flat"),
        BatchQuery(SearchQuery(text="sandals", image=photos[1]), k=4),
        BatchQuery(SearchQuery(text="   "), k=3),  # invalid: its slot gets the error
        BatchQuery(SearchQuery(image=photos[2]), k=6),
        BatchQuery(SearchQuery(text="red kurta"), k=5, explore=3),
        BatchQuery(SearchQuery(text="red kurta"), k=5, mode="flat", explore=3),  # flat: no category left out
    ]
    results = search_batch(retriever, queries)
    assert len(results) == len(queries)
    assert isinstance(results[3], InvalidQueryError)
    for bq, got in zip(queries, results, strict=True):
        if isinstance(got, InvalidQueryError):
            continue
        alone = retriever.search(bq.query, k=bq.k, mode=bq.mode, explore=bq.explore)
        assert [h.product_id for h in got.hits] == [h.product_id for h in alone.hits]
        assert got.explored == alone.explored == len(got.hits) - min(bq.k, len(got.hits))
        assert got.explored == (3 if bq.explore and bq.mode == "hierarchical" else 0)
        assert got.mode == bq.mode and got.timing_ms["batch_size"] == len(queries)
