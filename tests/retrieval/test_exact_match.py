"""The exact-product stage: edited copies of real catalogue photos come back first; strangers are not matched.

The image tower here is the tiny *untrained* test tower, so whatever comes first comes from the
exact-match stage, not from the tower's quality.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image

from retrieval.catalogue import Catalogue, load_catalogue
from retrieval.categories import CategoryIndex
from retrieval.edge_store import EdgeStore
from retrieval.encoders import OpenClipImageEncoder, SentenceTransformerTextEncoder
from retrieval.errors import StoreError
from retrieval.exact_match import FINGERPRINT_FIELD, ExactMatchIndex, fingerprint, fingerprint_distance
from retrieval.hierarchical import HierarchicalRetriever
from retrieval.indexer import build_index
from retrieval.search import Retriever, SearchHit, SearchQuery
from retrieval.store import SearchFilter, derived_cache_key
from tests.conftest import stratified_ids, write_subset


def edited(img: Image.Image, rng: random.Random) -> Image.Image:
    """A light edit: crop 5-10 % off two sides, resize, re-compress as JPEG at quality 60-85."""
    w, h = img.size
    cut = rng.uniform(0.05, 0.10)
    img = img.crop((round(w * cut / 2), round(h * cut / 2), w, h))
    scale = rng.uniform(1.5, 4.0)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(60, 85))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


@pytest.fixture(scope="module")
def split(fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalogue, Catalogue]:
    """An indexed catalogue (2 per category path) and products of the same paths that are not in it."""
    ids = stratified_ids(fashion_dir, 4)
    indexed_ids = [pid for i, pid in enumerate(ids) if i % 2 == 0]
    outside_ids = [pid for i, pid in enumerate(ids) if i % 2 == 1]
    root = tmp_path_factory.mktemp("exact")
    inside = load_catalogue(write_subset(fashion_dir, root / "inside", indexed_ids))
    outside = load_catalogue(write_subset(fashion_dir, root / "outside", outside_ids))
    return inside, outside


@pytest.fixture(scope="module")
def store(
    split: tuple[Catalogue, Catalogue],
    tmp_path_factory: pytest.TempPathFactory,
    text_encoder: SentenceTransformerTextEncoder,
    image_encoder: OpenClipImageEncoder,
) -> EdgeStore:
    s = EdgeStore(tmp_path_factory.mktemp("exact-idx") / "products")
    build_index(split[0], s, text_encoder, image_encoder, batch_size=128)
    return s


def photo(path: Path | None) -> Image.Image:
    assert path is not None
    with Image.open(path) as im:
        return im.convert("RGB")


def test_fingerprint_is_stable_and_distance_zero_for_the_same_picture(split: tuple[Catalogue, Catalogue]) -> None:
    a = photo(split[0].products[0].image_path)
    b = photo(split[0].products[1].image_path)
    fa, fb = fingerprint(a), fingerprint(b)
    assert fa == fingerprint(a.copy()) and len(fa) == 256
    prints = np.frombuffer(fa + fb, dtype=np.uint8).reshape(2, -1)
    d = fingerprint_distance(fa, prints)
    assert d[0] == 0.0 and d[1] > 0.0


def test_index_stores_fingerprints_and_the_cache_round_trips(
    store: EdgeStore, split: tuple[Catalogue, Catalogue], tmp_path: Path
) -> None:
    built = ExactMatchIndex.load_or_build(store, cache_dir=tmp_path)
    assert sorted(built.ids) == sorted(p.product_id for p in split[0].products)
    assert len(list(tmp_path.glob("exact-*.npz"))) == 1
    cached = ExactMatchIndex.load_or_build(store, cache_dir=tmp_path)
    assert cached.ids == built.ids and np.array_equal(cached.prints, built.prints)


def test_edited_copies_come_back_first_and_strangers_are_not_matched(
    store: EdgeStore, split: tuple[Catalogue, Catalogue], text_encoder, image_encoder
) -> None:  # type: ignore[no-untyped-def]
    inside, outside = split
    plain = Retriever(store, text_encoder, image_encoder)
    exact = Retriever(store, text_encoder, image_encoder, ExactMatchIndex.build(store))
    rng = random.Random(0)
    queries = inside.products[::3][:60]
    with_stage = without = 0
    for p in queries:
        query = SearchQuery(image=edited(photo(p.image_path), rng))
        with_stage += exact.search(query, k=5)[0].product_id == p.product_id
        without += plain.search(query, k=5)[0].product_id == p.product_id
    # The untrained tower misses many; the exact stage finds nearly all (a few catalogue photos are shared
    # by two products, which no image method can tell apart).
    assert with_stage >= 0.85 * len(queries)
    assert with_stage > without
    # The unedited catalogue photo is always its own product (or a byte-identical twin's).
    clean = [exact.search(SearchQuery(image=photo(p.image_path)), k=3)[0] for p in queries]
    assert sum(h.product_id == p.product_id for h, p in zip(clean, queries, strict=True)) >= 0.95 * len(queries)
    strangers = outside.products[::3][:60]
    matched = sum(exact.exact.match(edited(photo(p.image_path), rng)) is not None for p in strangers)  # type: ignore[union-attr]
    assert matched <= 0.1 * len(strangers)


def test_the_match_respects_filters_and_goes_first_in_hierarchical_search(
    store: EdgeStore, split: tuple[Catalogue, Catalogue], text_encoder, image_encoder
) -> None:  # type: ignore[no-untyped-def]
    p = split[0].products[10]
    exact = Retriever(store, text_encoder, image_encoder, ExactMatchIndex.build(store))
    img = photo(p.image_path)
    other_top = next(q.category[0] for q in split[0].products if q.category[0] != p.category[0])
    assert exact.exact is not None
    assert exact.exact.match(img, SearchFilter(category_prefix=[other_top])) is None
    assert exact.exact.match(img, SearchFilter(category_prefix=[p.category[0]])).product_id == p.product_id  # type: ignore[union-attr]
    hier = HierarchicalRetriever(exact, CategoryIndex.build(store, text_encoder))
    hits = hier.search(SearchQuery(image=img), k=5).hits
    assert hits[0].product_id == p.product_id and len(hits) == 5
    assert len({h.product_id for h in hits}) == 5


def test_ties_go_to_the_product_the_search_ranks_higher(
    store: EdgeStore, split: tuple[Catalogue, Catalogue], text_encoder, image_encoder
) -> None:  # type: ignore[no-untyped-def]
    """One picture under two product ids: the stage cannot tell them apart, the vector search's order decides."""
    a, b, c = split[0].products[:3]
    img = photo(a.image_path)
    twins = ExactMatchIndex.from_fingerprints(
        [a.product_id, b.product_id],
        [fingerprint(img)] * 2,
        [{"product_id": a.product_id}, {"product_id": b.product_id}],
    )
    retriever = Retriever(store, text_encoder, image_encoder, twins)
    hits = [
        SearchHit(pid, "", [], 0.5 - i / 10, None) for i, pid in enumerate([c.product_id, b.product_id, a.product_id])
    ]
    assert [h.product_id for h in retriever.exact_first(SearchQuery(image=img), hits, 3)] == [
        b.product_id, c.product_id, a.product_id
    ]  # fmt: skip
    # Neither twin among the hits: the nearest (the first indexed) goes first, and the list stays k long.
    out = retriever.exact_first(SearchQuery(image=img), hits[:1], 1)
    assert [h.product_id for h in out] == [a.product_id]


class _OldIndex:
    """The store as an index written before fingerprints existed: payloads without them; one photo gone."""

    def __init__(self, store: EdgeStore, missing_photo: str) -> None:
        self.store = store
        self.missing_photo = missing_photo

    def scroll(self, *, vectors: Sequence[str]) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        for payload, vecs in self.store.scroll(vectors=vectors):
            payload.pop(FINGERPRINT_FIELD, None)
            if payload.get("product_id") == self.missing_photo:
                payload["image"] = "/nonexistent/photo.jpg"
            yield payload, vecs


def test_an_index_without_fingerprints_is_fingerprinted_from_its_catalogue_photos(store: EdgeStore) -> None:
    stored = ExactMatchIndex.build(store)
    missing = stored.ids[0]
    old = ExactMatchIndex.build(cast(EdgeStore, _OldIndex(store, missing)))
    # The same photos give the same fingerprints as the ones stored at index time; an unreadable photo is left out.
    assert old.ids == stored.ids[1:]
    assert np.array_equal(old.prints, stored.prints[1:])


class _Uncountable:
    def __init__(self, store: EdgeStore) -> None:
        self.store = store

    def manifest(self) -> Any:
        return self.store.manifest()

    def count(self) -> int:
        raise StoreError("count is down")


def test_a_derived_cache_key_follows_the_index_and_is_none_when_its_size_is_unknown(store: EdgeStore) -> None:
    key = derived_cache_key(store, "v2", 1)
    assert key == derived_cache_key(store, "v2", 1) and key != derived_cache_key(store, "v2", 2)
    assert derived_cache_key(cast(EdgeStore, _Uncountable(store)), "v2", 1) is None
