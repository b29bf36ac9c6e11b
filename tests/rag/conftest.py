from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.catalogue import Catalogue, load_catalogue


@pytest.fixture(scope="session")
def catalogue(fashion_dir: Path) -> Catalogue:
    return load_catalogue(fashion_dir, limit=3000, check_images=False)
