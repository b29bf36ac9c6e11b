"""Index a catalogue into a vector store: idempotent and resumable.

Point ids are derived from product ids, and each batch skips products already
stored, so re-running after an interruption (or with a larger ``--limit``) only
does the missing work. A ``kill -9`` at any point is safe: an upsert is durable
once the store returns (Qdrant's write-ahead log), a batch is stored whole or
not at all, and the next run stores what is missing and finalises.

Indexing into a store that serves queries in the same process (the supported way
to grow a Qdrant Edge index while the service runs) passes ``finalize=False``: the
Edge optimiser holds the GIL for as long as it builds HNSW, which would stall every
request of that process; the new points are searched exactly meanwhile, and the
next ``tandem index`` (or :meth:`VectorStore.finalize`) builds the graph offline.

Example:
    >>> report = build_index(catalogue, store, text_enc, image_enc)  # doctest: +SKIP
    >>> report.indexed  # doctest: +SKIP
    2000
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from retrieval.catalogue import Catalogue, LoadIssue, Product
from retrieval.encoders import ImageEncoder, TextEncoder
from retrieval.errors import ImageError
from retrieval.exact_match import FINGERPRINT_FIELD, encode_fingerprint, fingerprint
from retrieval.images import ImageLimits, read_image_file
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR, IndexManifest, VectorRecord, VectorStore, level_field

__all__ = ["IndexReport", "build_index", "manifest_for", "product_payload"]


@dataclass(slots=True)
class IndexReport:
    """What an indexing run did, with its throughput."""

    total: int = 0
    indexed: int = 0
    skipped_existing: int = 0
    failed: list[LoadIssue] = field(default_factory=list)
    seconds: float = 0.0
    image_seconds: float = 0.0
    text_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.image_seconds if self.image_seconds > 0 else 0.0

    @property
    def texts_per_s(self) -> float:
        return self.indexed / self.text_seconds if self.text_seconds > 0 else 0.0


def manifest_for(catalogue: Catalogue, text_encoder: TextEncoder, image_encoder: ImageEncoder) -> IndexManifest:
    attrs = sorted({k for p in catalogue.products for k in p.attributes})
    return IndexManifest(
        text_encoder=text_encoder.model_id,
        text_dim=text_encoder.dim,
        image_encoder=image_encoder.model_id,
        image_dim=image_encoder.dim,
        category_levels=list(catalogue.level_names),
        attribute_fields=attrs,
        catalogue=str(catalogue.root.resolve()),
        image_text_aligned=getattr(image_encoder, "aligned_text_encoder", None) == text_encoder.model_id,
    )


def product_payload(product: Product, depth: int | None = None) -> dict[str, Any]:
    """The stored payload. ``depth``: the catalogue's deepest path; a shorter (ragged) path fills the levels
    below its leaf with the leaf itself, so level 1 at any depth still finds the product in one category."""
    payload: dict[str, Any] = {
        "product_id": product.product_id,
        "title": product.title,
        "category": list(product.category),
        "category_path": product.category_path,
        "attributes": dict(product.attributes),
        "image": str(product.image_path.resolve()) if product.image_path else None,
    }
    for level in range(max(len(product.category), depth or 0)):
        payload[level_field(level)] = " > ".join(product.category[: level + 1])
    return payload


def _decode_all(
    products: Sequence[Product], limits: ImageLimits, pool: ThreadPoolExecutor
) -> list[tuple[Image.Image, str] | str]:
    """Each photo decoded with its exact-match fingerprint (computed here, in the decode threads), or why not."""

    def one(p: Product) -> tuple[Image.Image, str] | str:
        if p.image_path is None:
            return "no image"
        try:
            img = read_image_file(p.image_path, limits)
        except ImageError as exc:
            return str(exc)
        return img, encode_fingerprint(fingerprint(img))

    return list(pool.map(one, products))


def build_index(
    catalogue: Catalogue,
    store: VectorStore,
    text_encoder: TextEncoder,
    image_encoder: ImageEncoder,
    *,
    limits: ImageLimits | None = None,
    batch_size: int = 256,
    rebuild: bool = False,
    progress: Callable[[int], None] | None = None,
    finalize: bool = True,
) -> IndexReport:
    """Encode and store every product of ``catalogue``; ``progress(n)`` is called as n products are handled.

    An existing index made by other encoders raises
    :class:`~retrieval.errors.EncoderMismatchError` unless ``rebuild`` is set. ``finalize=False``
    leaves the optimiser for later (for a store that is serving queries in this process).
    """
    limits = limits or ImageLimits()
    manifest = manifest_for(catalogue, text_encoder, image_encoder)
    existing_manifest = store.manifest()
    if existing_manifest is None or rebuild:
        store.create(manifest, recreate=True)
    else:
        existing_manifest.check_encoders(text_encoder=manifest.text_encoder, image_encoder=manifest.image_encoder)

    report = IndexReport(total=len(catalogue))
    started = time.perf_counter()
    products = catalogue.products
    deepest = max((len(p.category) for p in products), default=0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(products), batch_size):
            batch = products[start : start + batch_size]
            done = store.existing([p.product_id for p in batch])
            todo = [p for p in batch if p.product_id not in done]
            report.skipped_existing += len(batch) - len(todo)
            if todo:
                t0 = time.perf_counter()
                decoded = _decode_all(todo, limits, pool)
                ok: list[Product] = []
                images: list[Image.Image] = []
                prints: list[str] = []
                for p, item in zip(todo, decoded, strict=True):
                    if isinstance(item, str):
                        report.failed.append(LoadIssue("images", None, p.product_id, item))
                    else:
                        ok.append(p)
                        images.append(item[0])
                        prints.append(item[1])
                if ok:
                    image_vecs = image_encoder.encode(images)
                    t1 = time.perf_counter()
                    text_vecs = text_encoder.encode([p.text() for p in ok])
                    t2 = time.perf_counter()
                    report.image_seconds += t1 - t0
                    report.text_seconds += t2 - t1
                    store.upsert(
                        [
                            VectorRecord(
                                p.product_id,
                                {IMAGE_VECTOR: iv, TEXT_VECTOR: tv},
                                {**product_payload(p, deepest), FINGERPRINT_FIELD: fp},
                            )
                            for p, iv, tv, fp in zip(ok, image_vecs, text_vecs, prints, strict=True)
                        ]
                    )
                    report.indexed += len(ok)
            if progress is not None:
                progress(len(batch))
    if finalize:
        store.finalize()
    report.seconds = time.perf_counter() - started
    return report
