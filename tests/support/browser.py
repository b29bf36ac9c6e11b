"""Debian's Chromium driven by Playwright through ``executable_path``: one page for a browser test module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

__all__ = ["CHROMIUM", "chromium_page"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def chromium_page(init_script: str | None = None) -> Iterator[Any]:
    """A headless page (skips the test when Chromium is missing); ``init_script`` runs first in every document."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make test installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        if init_script:
            page.add_init_script(init_script)
        try:
            yield page
        finally:
            browser.close()
