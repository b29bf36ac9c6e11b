"""Shared fixtures: a small real catalogue, a tiny image tower built in the test session, MiniLM once."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FASHION = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion"


def write_subset(src: Path, dst: Path, ids: list[str]) -> Path:
    """Copy the rows of ``ids`` from ``src``'s CSV into ``dst``; images are symlinked (fast, no copies)."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    wanted = set(ids)
    with (src / "products.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if r["product_id"] in wanted]
        fields = reader.fieldnames or []
    with (dst / "products.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    for pid in ids:
        link = dst / "images" / f"{pid}.jpg"
        if not link.exists():
            link.symlink_to(src / "images" / f"{pid}.jpg")
    return dst


def stratified_ids(src: Path, per_category: int, max_categories: int | None = None) -> list[str]:
    """Up to ``per_category`` products from each full category path, in file order (deterministic)."""
    by_cat: dict[str, list[str]] = defaultdict(list)
    with (src / "products.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            key = f"{r['master_category']}>{r['sub_category']}>{r['article_type']}"
            if len(by_cat[key]) < per_category:
                by_cat[key].append(r["product_id"])
    cats = sorted(by_cat)[:max_categories] if max_categories else sorted(by_cat)
    return [pid for c in cats for pid in by_cat[c]]


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    if not (FASHION / "products.csv").is_file():
        pytest.fail(f"the shared catalogue is missing at {FASHION}")
    return FASHION


@pytest.fixture(scope="session")
def small_catalogue_dir(fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, stratified 3-per-category subset of the fashion catalogue (≈ 400 products)."""
    return write_subset(fashion_dir, tmp_path_factory.mktemp("small-catalogue"), stratified_ids(fashion_dir, 3))


@pytest.fixture(scope="session")
def tiny_tower_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, untrained open_clip image tower built in the test, saved as a ``local-dir:`` checkpoint."""
    from retrieval.image_tower import TowerConfig, build_tower, save_tower

    config = TowerConfig(
        name="test-tiny", embed_dim=384, image_size=32, patch_size=16, width=32, layers=1, head_width=16
    )
    return save_tower(build_tower(config), config, tmp_path_factory.mktemp("tower"), {"trained": False})


@pytest.fixture(scope="session")
def image_encoder(tiny_tower_dir: Path):  # type: ignore[no-untyped-def]
    from retrieval.encoders import OpenClipImageEncoder

    return OpenClipImageEncoder.from_checkpoint(tiny_tower_dir, batch_size=32)


@pytest.fixture(scope="session")
def text_encoder():  # type: ignore[no-untyped-def]
    from retrieval.encoders import SentenceTransformerTextEncoder

    return SentenceTransformerTextEncoder()


@pytest.fixture
def tandem_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_tower_dir: Path) -> Iterator[Path]:
    """An isolated TANDEM_HOME with the tiny tower as image encoder; settings rebuilt for the test."""
    from api.settings import get_settings

    home = tmp_path / "home"
    for key in list(os.environ):
        if key.startswith("TANDEM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TANDEM_HOME", str(home))
    monkeypatch.setenv("TANDEM_ENCODERS__IMAGE_CHECKPOINT", str(tiny_tower_dir))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()
