"""The web chat in a real headless Chromium (Debian's, driven by Playwright): a photo plus words → cards and text.

Screenshots go to ``tests/artifacts/`` (kept by CI as artifacts; a copy is committed in ``eval/reports/``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import API_KEY, LiveServer
from tests.support.browser import chromium_page

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with chromium_page() as page:
        yield page


def test_photo_and_words_show_cards_then_a_streamed_explanation_and_a_follow_up(
    page: Any, chat_live: LiveServer, small_catalogue_dir: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(chat_live.url + "/")
    page.fill("#key", API_KEY)
    page.dispatch_event("#key", "change")
    page.locator("#temperature").fill("0.7")
    photo = sorted((small_catalogue_dir / "images").glob("*.jpg"))[5]
    page.set_input_files("#photo", str(photo))
    page.wait_for_function("document.getElementById('photo-name').textContent.endsWith('.jpg')")
    page.fill("#text", "like this, for men")
    page.click("#send")
    page.wait_for_selector(".turn .card", timeout=120_000)  # cards appear on the ranking event
    page.wait_for_selector(".turn[data-done='true']", timeout=120_000)
    first = page.locator(".turn").nth(0)
    assert first.locator(".card").count() == 8  # the "products" slider's default
    assert first.locator(".card img").first.get_attribute("src").startswith("http")
    assert first.locator(".explanation").inner_text().strip()
    assert first.locator(".ask img").count() == 1  # the photo is shown with the question
    page.screenshot(path=str(ARTIFACTS / "web_chat_photo.png"), full_page=True)

    page.locator("#explore").fill("3")
    page.locator("#mmr").fill("0.5")
    page.fill("#text", "in black")
    page.click("#send")
    page.wait_for_selector(".turn:nth-child(2)[data-done='true']", timeout=120_000)
    second = page.locator(".turn").nth(1)
    shown = set(first.locator(".card").evaluate_all("cards => cards.map(c => c.dataset.productId)"))
    again = set(second.locator(".card").evaluate_all("cards => cards.map(c => c.dataset.productId)"))
    assert again and shown.isdisjoint(again)  # the follow-up refined the session, nothing repeated
    notes = second.locator(".degraded").inner_text()
    assert "3 nearby categories" in notes and "MMR λ 0.50" in notes  # the sliders reached the API
    assert page.locator("#session").inner_text().startswith("session ")
    page.screenshot(path=str(ARTIFACTS / "web_chat_follow_up.png"), full_page=True)

    page.check("#use-diversity")
    assert all(page.locator(f"#{knob}").is_disabled() for knob in ("temperature", "explore", "candidates", "mmr"))
    page.locator("#diversity").fill("0.9")
    page.fill("#text", "watches")
    page.click("#send")
    page.wait_for_selector(".turn:nth-child(3)[data-done='true']", timeout=120_000)
    assert page.locator(".turn").nth(2).locator(".degraded").inner_text().startswith("ILD ")
