from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.catalogue import Catalogue, load_catalogue
from retrieval.edge_store import EdgeStore
from retrieval.encoders import OpenClipImageEncoder, SentenceTransformerTextEncoder
from retrieval.errors import EncoderMismatchError, IndexNotFoundError, InvalidQueryError
from retrieval.images import ImageLimits, read_image_file
from retrieval.indexer import build_index
from retrieval.search import Retriever, SearchQuery
from retrieval.store import IMAGE_VECTOR, SearchFilter


class RenamedEncoder:
    """The same tower under another id: what a different checkpoint looks like to the index."""

    def __init__(self, inner: OpenClipImageEncoder) -> None:
        self.inner, self.dim, self.model_id = inner, inner.dim, inner.model_id + "-other"

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        return self.inner.encode(images)


@pytest.fixture(scope="module")
def catalogue(small_catalogue_dir: Path) -> Catalogue:
    return load_catalogue(small_catalogue_dir)


@pytest.fixture(scope="module")
def indexed(
    catalogue: Catalogue,
    tmp_path_factory: pytest.TempPathFactory,
    text_encoder: SentenceTransformerTextEncoder,
    image_encoder: OpenClipImageEncoder,
) -> EdgeStore:
    store = EdgeStore(tmp_path_factory.mktemp("idx") / "products")
    report = build_index(catalogue, store, text_encoder, image_encoder, batch_size=64)
    assert report.indexed == len(catalogue) and not report.failed
    return store


def test_index_then_search_text(indexed: EdgeStore, text_encoder, image_encoder) -> None:  # type: ignore[no-untyped-def]
    r = Retriever(indexed, text_encoder, image_encoder)
    hits = r.search(SearchQuery(text="red kurta"), k=10)
    assert len(hits) == 10
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # MiniLM puts kurtas first for this query: the top hit's category says so.
    assert hits[0].category[-1] == "Kurtas"
    assert all(h.image and Path(h.image).is_file() for h in hits)


def test_photo_of_a_product_finds_that_product_first(
    indexed: EdgeStore, catalogue: Catalogue, text_encoder, image_encoder
) -> None:  # type: ignore[no-untyped-def]
    r = Retriever(indexed, text_encoder, image_encoder)
    for product in catalogue.products[:: len(catalogue) // 5]:
        assert product.image_path is not None
        img = read_image_file(product.image_path, ImageLimits())
        hits = r.search(SearchQuery(image=img), k=5)
        assert hits[0].product_id == product.product_id
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_text_and_photo_fused(indexed: EdgeStore, catalogue: Catalogue, text_encoder, image_encoder) -> None:  # type: ignore[no-untyped-def]
    r = Retriever(indexed, text_encoder, image_encoder)
    product = catalogue.products[10]
    assert product.image_path is not None
    img = read_image_file(product.image_path, ImageLimits())
    hits = r.search(SearchQuery(text=product.title, image=img), k=5)
    # Top of both the text and the image ranking: the fused list puts it first.
    assert hits[0].product_id == product.product_id


def test_filter_restricts_to_category(indexed: EdgeStore, text_encoder, image_encoder) -> None:  # type: ignore[no-untyped-def]
    r = Retriever(indexed, text_encoder, image_encoder)
    hits = r.search(SearchQuery(text="red", filter=SearchFilter(category_prefix=["Footwear"])), k=8)
    assert hits and all(h.category[0] == "Footwear" for h in hits)


def test_stored_vectors_equal_fresh_encodings(indexed: EdgeStore, catalogue: Catalogue, image_encoder) -> None:  # type: ignore[no-untyped-def]
    product = catalogue.products[3]
    assert product.image_path is not None
    vec = image_encoder.encode([read_image_file(product.image_path, ImageLimits())])[0]
    top = indexed.search(vec, using=IMAGE_VECTOR, k=1)[0]
    assert top.product_id == product.product_id


def test_bad_queries(indexed: EdgeStore, text_encoder, image_encoder) -> None:  # type: ignore[no-untyped-def]
    r = Retriever(indexed, text_encoder, image_encoder)
    with pytest.raises(InvalidQueryError):
        r.search(SearchQuery(text="  "), k=5)
    with pytest.raises(InvalidQueryError):
        r.search(SearchQuery(text="shoes"), k=0)


def test_query_from_another_encoder_is_refused(indexed: EdgeStore, text_encoder, image_encoder) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EncoderMismatchError, match="tandem index --rebuild"):
        Retriever(indexed, text_encoder, RenamedEncoder(image_encoder))


def test_no_index_is_a_clear_error(tmp_path: Path, text_encoder, image_encoder) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IndexNotFoundError, match="tandem index"):
        Retriever(EdgeStore(tmp_path / "none"), text_encoder, image_encoder)


def test_indexing_is_idempotent_and_resumable(
    small_catalogue_dir: Path, tmp_path: Path, text_encoder, image_encoder
) -> None:  # type: ignore[no-untyped-def]
    store = EdgeStore(tmp_path / "p")
    first = build_index(load_catalogue(small_catalogue_dir, limit=30), store, text_encoder, image_encoder)
    assert (first.indexed, first.skipped_existing) == (30, 0)
    # An interrupted run resumed with a larger limit only does the missing products.
    second = build_index(load_catalogue(small_catalogue_dir, limit=50), store, text_encoder, image_encoder)
    assert (second.indexed, second.skipped_existing) == (20, 30)
    third = build_index(load_catalogue(small_catalogue_dir, limit=50), store, text_encoder, image_encoder)
    assert (third.indexed, third.skipped_existing) == (0, 50)
    assert store.count() == 50
    store.close()
    reopened = EdgeStore(tmp_path / "p")
    assert reopened.count() == 50
    with pytest.raises(EncoderMismatchError):
        build_index(load_catalogue(small_catalogue_dir, limit=5), reopened, text_encoder, RenamedEncoder(image_encoder))
    rebuilt = build_index(
        load_catalogue(small_catalogue_dir, limit=5),
        reopened,
        text_encoder,
        RenamedEncoder(image_encoder),
        rebuild=True,
    )
    assert rebuilt.indexed == 5 and reopened.count() == 5
    reopened.close()


def test_unreadable_image_at_index_time_is_reported(
    small_catalogue_dir: Path, tmp_path: Path, text_encoder, image_encoder
) -> None:  # type: ignore[no-untyped-def]
    cat = load_catalogue(small_catalogue_dir, limit=6, check_images=False)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    cat.products[2] = dataclasses.replace(cat.products[2], image_path=broken)
    store = EdgeStore(tmp_path / "p")
    report = build_index(cat, store, text_encoder, image_encoder)
    assert report.indexed == 5
    assert [i.column for i in report.failed] == [cat.products[2].product_id]
    store.close()
