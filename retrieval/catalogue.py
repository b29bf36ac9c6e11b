"""Product catalogue: load ``products.csv`` + ``images/`` with row-level validation.

Example:
    >>> from retrieval.catalogue import load_catalogue
    >>> cat = load_catalogue("../shared/data/fashion", limit=100)  # doctest: +SKIP
    >>> cat.products[0].category_path  # doctest: +SKIP
    'Apparel > Topwear > Kurtas'
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field, field_validator

from retrieval.errors import CatalogueError

__all__ = [
    "CATEGORY_SEPARATOR",
    "Catalogue",
    "ColumnMapping",
    "LoadIssue",
    "Product",
    "load_catalogue",
]

CATEGORY_SEPARATOR = " > "


class ColumnMapping(BaseModel):
    """How a catalogue's CSV columns map onto Tandem's product fields.

    ``attribute_columns=None`` takes every column that is not the id, title or a
    category level as a free attribute.
    """

    csv_name: str = "products.csv"
    images_dir: str = "images"
    image_pattern: str = Field(default="{id}.jpg", description="Image file name under images_dir; {id} is replaced.")
    id_column: str = "product_id"
    title_column: str = "title"
    category_columns: list[str] = Field(default_factory=lambda: ["master_category", "sub_category", "article_type"])
    attribute_columns: list[str] | None = None
    category_separator: str | None = Field(
        default=None,
        description="When set, the one category column holds the whole path, split on this (e.g. ' > ' or '/').",
    )

    @field_validator("category_columns")
    @classmethod
    def _at_least_one_level(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("category_columns needs at least one column")
        return value


def _category_levels(row: Mapping[str | Any, str | Any], mapping: ColumnMapping) -> list[str] | LoadIssue:
    """A row's category path, top level first. Trees may be ragged (3 to 7 levels, say): trailing empty
    levels end a shorter path; an empty level above a filled one is an error, as is an empty top level."""
    if mapping.category_separator:
        column = mapping.category_columns[0]
        raw = [v.strip() for v in str(row.get(column) or "").split(mapping.category_separator)]
        levels = [(column, v) for v in raw]
        while levels and not levels[-1][1]:
            levels.pop()
    else:
        levels = [(c, str(row.get(c) or "").strip()) for c in mapping.category_columns]
        while levels and not levels[-1][1]:
            levels.pop()
    if not levels:
        return LoadIssue("", None, mapping.category_columns[0], "empty category")
    for column, value in levels:
        if not value:
            return LoadIssue("", None, column, "empty category level above a deeper one")
    return [v for _, v in levels]


@dataclass(frozen=True, slots=True)
class Product:
    """One catalogue product."""

    product_id: str
    title: str
    category: tuple[str, ...]
    attributes: dict[str, str]
    image_path: Path | None

    @property
    def category_path(self) -> str:
        return CATEGORY_SEPARATOR.join(self.category)

    def text(self) -> str:
        """The text a product is embedded from: title, then category path."""
        return f"{self.title}. {CATEGORY_SEPARATOR.join(self.category)}"


@dataclass(frozen=True, slots=True)
class LoadIssue:
    """A problem found while loading: the row is skipped, the load goes on."""

    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.column:
            where += f", column {self.column!r}"
        return f"{where}: {self.message}"


@dataclass(slots=True)
class Catalogue:
    """Validated products plus what was skipped and why."""

    root: Path
    products: list[Product]
    issues: list[LoadIssue] = field(default_factory=list)
    level_names: tuple[str, ...] = ()
    _by_id: dict[str, Product] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {p.product_id: p for p in self.products}

    def __len__(self) -> int:
        return len(self.products)

    def __iter__(self) -> Iterator[Product]:
        return iter(self.products)

    def get(self, product_id: str) -> Product | None:
        return self._by_id.get(product_id)

    def counts_per_level(self) -> list[Counter[str]]:
        """For each depth d, how many products sit under each category prefix of length d+1."""
        depth = max((len(p.category) for p in self.products), default=0)
        counters: list[Counter[str]] = [Counter() for _ in range(depth)]
        for p in self.products:
            for d in range(len(p.category)):
                counters[d][CATEGORY_SEPARATOR.join(p.category[: d + 1])] += 1
        return counters


def _check_image(path: Path) -> str | None:
    """Cheap check that an image exists and its header parses; full decoding happens at indexing."""
    if not path.is_file():
        return f"image file {path.name} is missing"
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"image file {path.name} is unreadable ({exc.__class__.__name__})"
    return None


def _attribute_columns(
    header: Sequence[str], csv_path: Path, mapping: ColumnMapping, issues: list[LoadIssue]
) -> list[str]:
    """Check the required columns are in ``header``; returns the attribute columns found there.

    An attribute column the mapping names but the CSV lacks is reported in ``issues`` and ignored.
    """
    required = [mapping.id_column, mapping.title_column, *mapping.category_columns]
    missing = [c for c in required if c not in header]
    if missing:
        raise CatalogueError(
            f"{csv_path}: missing required column(s) {', '.join(missing)}; header is {', '.join(header)}"
        )
    structural = set(required)
    attr_cols = (
        [c for c in header if c not in structural]
        if mapping.attribute_columns is None
        else list(mapping.attribute_columns)
    )
    unknown_attrs = [c for c in attr_cols if c not in header]
    for c in unknown_attrs:
        issues.append(LoadIssue(csv_path.name, None, c, "attribute column not in the CSV; ignored"))
    return [c for c in attr_cols if c in header]


@dataclass(slots=True)
class _RowParser:
    """Turns one CSV row into a :class:`Product`, or the :class:`LoadIssue` that skips it."""

    mapping: ColumnMapping
    fname: str
    images_dir: Path
    attr_cols: list[str]
    check_images: bool
    seen: set[str] = field(default_factory=set)

    def parse(self, line_no: int, row: dict[str | Any, str | Any]) -> Product | LoadIssue:
        mapping, fname = self.mapping, self.fname
        if None in row:
            return LoadIssue(fname, line_no, None, "row has more fields than the header")
        product_id = (row.get(mapping.id_column) or "").strip()
        if not product_id:
            return LoadIssue(fname, line_no, mapping.id_column, "empty product id")
        if product_id in self.seen:
            return LoadIssue(fname, line_no, mapping.id_column, f"duplicate product id {product_id}")
        title = (row.get(mapping.title_column) or "").strip()
        if not title:
            return LoadIssue(fname, line_no, mapping.title_column, "empty title")
        category = _category_levels(row, mapping)
        if isinstance(category, LoadIssue):
            return LoadIssue(fname, line_no, category.column, category.message)
        image_path = self.images_dir / mapping.image_pattern.format(id=product_id)
        if self.check_images:
            problem = _check_image(image_path)
            if problem:
                return LoadIssue(fname, line_no, mapping.id_column, problem)
        attributes = {c: v.strip() for c in self.attr_cols if (v := row.get(c) or "").strip()}
        self.seen.add(product_id)
        return Product(product_id, title, tuple(category), attributes, image_path)


def load_catalogue(
    root: str | Path,
    mapping: ColumnMapping | None = None,
    *,
    limit: int | None = None,
    check_images: bool = True,
) -> Catalogue:
    """Load and validate a catalogue folder.

    Bad rows (missing value in a required column, duplicate id, empty title, missing
    or unreadable image) are reported as :class:`LoadIssue` and skipped. A missing
    folder, CSV or required column header is a :class:`CatalogueError`.
    ``limit`` keeps the first ``limit`` valid products.
    """
    mapping = mapping or ColumnMapping()
    root = Path(root)
    if not root.is_dir():
        raise CatalogueError(f"catalogue folder {root} does not exist")
    csv_path = root / mapping.csv_name
    if not csv_path.is_file():
        raise CatalogueError(f"catalogue CSV {csv_path} does not exist")
    images_dir = root / mapping.images_dir
    if limit is not None and limit <= 0:
        raise CatalogueError(f"limit must be positive, got {limit}")

    products: list[Product] = []
    issues: list[LoadIssue] = []
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            attr_cols = _attribute_columns(reader.fieldnames or [], csv_path, mapping, issues)
            parser = _RowParser(mapping, csv_path.name, images_dir, attr_cols, check_images)
            # Row numbers are 1-based file lines: the header is line 1.
            for line_no, row in enumerate(reader, start=2):
                if limit is not None and len(products) >= limit:
                    break
                item = parser.parse(line_no, row)
                if isinstance(item, LoadIssue):
                    issues.append(item)
                else:
                    products.append(item)
    except UnicodeDecodeError as exc:
        raise CatalogueError(f"{csv_path} is not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise CatalogueError(f"{csv_path} is not a valid CSV: {exc}") from exc
    except OSError as exc:
        raise CatalogueError(f"cannot read {csv_path}: {exc}") from exc
    if not products:
        raise CatalogueError(f"{csv_path} has no usable product rows ({len(issues)} problem(s) reported)")
    return Catalogue(root=root, products=products, issues=issues, level_names=tuple(mapping.category_columns))
