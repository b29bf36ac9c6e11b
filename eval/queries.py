"""Buyer-style photo queries made from catalogue products (for the retrieval evaluation).

A buyer's photo of a catalogue product differs from the catalogue thumbnail: larger,
cropped differently, slightly rotated, another exposure, re-compressed. This writes a
query folder in the evaluation's format: ``products.csv`` with the catalogue's columns
and ``images/<product_id>.jpg``.

Example:
    >>> make_photo_queries(catalogue, ids, Path("var/eval/queries"))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageEnhance

from retrieval.catalogue import ColumnMapping, Product

__all__ = ["buyer_photo", "make_photo_queries"]


def buyer_photo(img: Image.Image, rng: random.Random) -> Image.Image:
    """A plausible buyer's photo of the product in ``img`` (PIL operations, independent of training's)."""
    w, h = img.size
    area = rng.uniform(0.7, 0.95)
    cw, ch = max(8, int(w * area**0.5)), max(8, int(h * area**0.5))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    longer = rng.randint(100, 400)
    scale = longer / max(img.size)
    img = img.resize((max(8, round(img.width * scale)), max(8, round(img.height * scale))), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        img = img.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
    return ImageEnhance.Brightness(img).enhance(rng.uniform(0.85, 1.15))


def make_photo_queries(
    products: Sequence[Product],
    out_dir: Path,
    *,
    mapping: ColumnMapping | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``products.csv`` + ``images/`` under ``out_dir`` for ``products``; returns the CSV path."""
    mapping = mapping or ColumnMapping()
    rng = random.Random(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    attr_names = sorted({k for p in products for k in p.attributes})
    header = [mapping.id_column, mapping.title_column, *mapping.category_columns, *attr_names]
    csv_path = out_dir / "products.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for p in products:
            if p.image_path is None:
                continue
            with Image.open(p.image_path) as src:
                photo = buyer_photo(src.convert("RGB"), rng)
            photo.save(out_dir / "images" / f"{p.product_id}.jpg", format="JPEG", quality=rng.randint(35, 85))
            writer.writerow([p.product_id, p.title, *p.category, *(p.attributes.get(a, "") for a in attr_names)])
            if progress:
                progress(1)
    return csv_path
