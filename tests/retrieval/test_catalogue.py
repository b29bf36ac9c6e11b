from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from retrieval.catalogue import ColumnMapping, Product, load_catalogue
from retrieval.errors import CatalogueError
from retrieval.indexer import product_payload
from retrieval.store import level_field

HEADER = ["product_id", "title", "master_category", "sub_category", "article_type", "base_colour", "usage"]


def make_catalogue(root: Path, rows: list[list[str]], *, images: dict[str, bytes | None] | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    with (root / "products.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        w.writerows(rows)
    for row in rows:
        pid = row[0]
        data = (images or {}).get(pid, b"png")
        if data is None:
            continue  # no image file at all
        if data == b"png":
            Image.new("RGB", (6, 8), (200, 10, 10)).save(root / "images" / f"{pid}.jpg", format="JPEG")
        else:
            (root / "images" / f"{pid}.jpg").write_bytes(data)
    return root


def good(pid: str, title: str = "Red Kurta") -> list[str]:
    return [pid, title, "Apparel", "Topwear", "Kurtas", "Red", "Ethnic"]


def test_loads_real_catalogue_subset(small_catalogue_dir: Path) -> None:
    cat = load_catalogue(small_catalogue_dir)
    assert len(cat) > 300
    assert cat.issues == []
    p = cat.products[0]
    assert len(p.category) == 3
    assert p.category_path == " > ".join(p.category)
    assert p.image_path is not None and p.image_path.is_file()
    assert set(p.attributes) <= {"base_colour", "usage"}
    assert cat.get(p.product_id) is p


def test_broken_rows_are_reported_and_skipped(tmp_path: Path) -> None:
    rows = [
        good("1"),
        good("2", title=""),  # empty title
        good("1", title="dup"),  # duplicate id
        good("3"),  # image missing
        good("4"),  # corrupt image
        ["5", "Shirt", "Apparel", "", "Shirts", "Blue", "Casual"],  # empty category level
        good("6"),
    ]
    root = make_catalogue(tmp_path / "c", rows, images={"3": None, "4": b"not a jpeg at all"})
    cat = load_catalogue(root)
    assert [p.product_id for p in cat.products] == ["1", "6"]
    found = {(i.row, i.column) for i in cat.issues}
    # Row numbers are file lines: header is line 1, so rows[k] is line k + 2.
    assert found == {
        (3, "title"),
        (4, "product_id"),
        (5, "product_id"),
        (6, "product_id"),
        (7, "sub_category"),
    }
    messages = " | ".join(str(i) for i in cat.issues)
    assert "duplicate product id 1" in messages
    assert "missing" in messages and "unreadable" in messages
    assert all(i.file == "products.csv" for i in cat.issues)


def test_limit_counts_valid_products(tmp_path: Path) -> None:
    root = make_catalogue(tmp_path / "c", [good("1", title=""), good("2"), good("3"), good("4")])
    cat = load_catalogue(root, limit=2)
    assert [p.product_id for p in cat.products] == ["2", "3"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no-folder", "does not exist"),
        ("no-csv", "does not exist"),
        ("no-column", "missing required column"),
        ("all-bad", "no usable product rows"),
    ],
)
def test_unusable_catalogue_is_one_clear_error(tmp_path: Path, setup: str, message: str) -> None:
    root = tmp_path / "c"
    if setup == "no-csv":
        root.mkdir()
    elif setup == "no-column":
        root.mkdir()
        (root / "products.csv").write_text("product_id,name\n1,x\n")
    elif setup == "all-bad":
        make_catalogue(root, [good("1", title="")])
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(root)


def test_column_mapping_fits_another_catalogue(tmp_path: Path) -> None:
    root = tmp_path / "other"
    (root / "pics").mkdir(parents=True)
    (root / "items.csv").write_text(
        "sku,name,dept,kind,material\nA-1,Steel bolt,Hardware,Bolts,steel\nA-2,Oak plank,Wood,Planks,oak\n"
    )
    for sku in ("A-1", "A-2"):
        Image.new("RGB", (4, 4)).save(root / "pics" / f"{sku}.png")
    mapping = ColumnMapping(
        csv_name="items.csv",
        images_dir="pics",
        image_pattern="{id}.png",
        id_column="sku",
        title_column="name",
        category_columns=["dept", "kind"],
    )
    cat = load_catalogue(root, mapping)
    assert [p.product_id for p in cat] == ["A-1", "A-2"]
    assert cat.products[1].category == ("Wood", "Planks")
    assert cat.products[1].attributes == {"material": "oak"}
    assert cat.level_names == ("dept", "kind")


def test_counts_per_level(tmp_path: Path) -> None:
    rows = [good("1"), good("2"), ["3", "Wallet", "Accessories", "Wallets", "Wallets", "Black", "Casual"]]
    cat = load_catalogue(make_catalogue(tmp_path / "c", rows))
    top, mid, leaf = cat.counts_per_level()
    assert top == {"Apparel": 2, "Accessories": 1}
    assert mid["Apparel > Topwear"] == 2
    assert sum(leaf.values()) == 3


def _ragged(root: Path, header: str, rows: list[str]) -> Path:
    (root / "pics").mkdir(parents=True)
    (root / "items.csv").write_text("\n".join([header, *rows]) + "\n")
    for row in rows:
        Image.new("RGB", (4, 4)).save(root / "pics" / f"{row.split(',')[0]}.png")
    return root


def test_a_ragged_tree_of_3_to_7_levels_loads_and_a_gap_above_a_level_is_refused(tmp_path: Path) -> None:
    levels = [f"l{i}" for i in range(1, 8)]
    root = _ragged(tmp_path / "deep", "sku,name," + ",".join(levels), [
        "W-1,Steel watch,Watches,Men,Analog,,,,",  # 3 levels
        "H-1,Cast-iron pan,Home,Kitchen,Cookware,Pans,Frying,Cast iron,12 inch",  # 7 levels
        "B-1,Baby wipes,Baby care,,Wipes,,,,",  # a gap above a filled level: refused, not silently shortened
        "X-1,Nothing,,,,,,,",  # no category at all
    ])  # fmt: skip
    mapping = ColumnMapping(csv_name="items.csv", images_dir="pics", image_pattern="{id}.png", id_column="sku",
                            title_column="name", category_columns=levels)  # fmt: skip
    cat = load_catalogue(root, mapping)
    assert [(p.product_id, len(p.category)) for p in cat] == [("W-1", 3), ("H-1", 7)]
    assert cat.products[1].category_path == "Home > Kitchen > Cookware > Pans > Frying > Cast iron > 12 inch"
    assert {(i.row, i.column, i.message) for i in cat.issues} == {
        (4, "l2", "empty category level above a deeper one"),
        (5, "l1", "empty category"),
    }
    assert [len(c) for c in cat.counts_per_level()] == [2, 2, 2, 1, 1, 1, 1]


def test_one_path_column_with_a_separator(tmp_path: Path) -> None:
    root = _ragged(
        tmp_path / "sep", "sku,name,path", ["C-1,Laptop,Computers / Laptops / 14 inch", "C-2,Mouse,Computers / Mice /"]
    )
    mapping = ColumnMapping(csv_name="items.csv", images_dir="pics", image_pattern="{id}.png", id_column="sku",
                            title_column="name", category_columns=["path"], category_separator="/")  # fmt: skip
    cat = load_catalogue(root, mapping)
    assert [p.category for p in cat] == [("Computers", "Laptops", "14 inch"), ("Computers", "Mice")]


def test_a_shorter_path_fills_the_deeper_levels_with_its_leaf(tmp_path: Path) -> None:
    shallow = Product("W-1", "Steel watch", ("Watches", "Men"), {}, None)
    payload = product_payload(shallow, depth=4)
    assert [payload[level_field(d)] for d in range(4)] == ["Watches", "Watches > Men", "Watches > Men", "Watches > Men"]
    assert level_field(4) not in payload and payload["category_path"] == "Watches > Men"
