from __future__ import annotations

from pathlib import Path

import pytest

from api.settings import Settings, get_settings


def test_defaults() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.home == Path("./var")
    assert s.qdrant.url is None
    assert s.encoders.text_model == "all-MiniLM-L6-v2"
    assert s.catalogue.columns.category_columns == ["master_category", "sub_category", "article_type"]


def test_env_prefix_and_nested_sections(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    monkeypatch.setenv("TANDEM_QDRANT__URL", "http://qdrant:6333")
    monkeypatch.setenv("TANDEM_QDRANT__API_KEY", "s3cret")
    monkeypatch.setenv("TANDEM_CATALOGUE__COLUMNS__ID_COLUMN", "sku")
    monkeypatch.setenv("TANDEM_CATALOGUE__COLUMNS__CATEGORY_COLUMNS", '["dept", "kind"]')
    monkeypatch.setenv("TANDEM_IMAGES__MAX_BYTES", "1234")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.home == tmp_path
    assert s.qdrant.url == "http://qdrant:6333"
    assert s.qdrant.api_key is not None and s.qdrant.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.catalogue.columns.id_column == "sku"
    assert s.catalogue.columns.category_columns == ["dept", "kind"]
    assert s.images.max_bytes == 1234
    assert s.qdrant_dir == tmp_path / "qdrant" / "products"


def test_invalid_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_IMAGES__MAX_BYTES", "-5")
    with pytest.raises(ValueError, match="max_bytes"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_get_settings_is_lazy_and_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "a"))
    first = get_settings()
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "b"))
    assert get_settings() is first  # cached until cleared
    get_settings.cache_clear()
    assert get_settings().home == tmp_path / "b"
    get_settings.cache_clear()
