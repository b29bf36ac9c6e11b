"""Hostile catalogue text in the web chat: shown literally, never run; the page's Content-Security-Policy.

A tiny catalogue copy where shirts' titles hold markup and script is indexed and served live
with the small chat models; Debian's Chromium (driven by Playwright, as in ``test_web_chat.py``)
asks for shirts. Nothing may execute: no dialog, no injected element, no flag set by a payload,
and the titles must appear as text. The CSP is checked on its own too: the page has no inline
script or style to exempt, and markup that did reach the DOM could still not run.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import API_KEY, LiveServer, make_settings, start_live
from tests.conftest import write_subset
from tests.support.browser import chromium_page

# Each payload, if it ever ran, would open a dialog and set window.__xss.
HOSTILE_TITLES = {
    "img": 'Acme Men <img src=x onerror="window.__xss=1;alert(1)"> Shirt',
    "script": "Acme Men <script>window.__xss=2;alert(2)</script> Shirt",
    "attribute": 'Acme Men "><svg onload="window.__xss=3;alert(3)"> Shirt',
    "entity": "Acme Men &lt;b&gt;bold&lt;/b&gt; &amp; <b>Shirt</b>",
}


def _csp(header: str) -> dict[str, list[str]]:
    directives = (part.strip().split() for part in header.split(";") if part.strip())
    return {d[0]: d[1:] for d in directives}


class _Inline(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block: inline scripts and styles, on* handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{name}= on <{tag}>" for name in names if name == "style" or name.startswith("on")]


# -- the header, without a browser -------------------------------------------------------------------


def test_the_web_chat_sends_a_strict_csp_and_has_nothing_inline(client: Any) -> None:
    page = client.get("/", headers={"X-API-Key": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = _csp(page.headers["content-security-policy"])
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["img-src"] == ["'self'", "data:", "https:"]
    assert not any("unsafe" in source for sources in csp.values() for source in sources)
    assert page.headers["x-content-type-options"] == "nosniff"
    parser = _Inline()
    parser.feed(page.text)
    assert parser.found == []
    # What the page loads instead is served, without a key, as what it is.
    for path, kind in (("/static/chat.js", "javascript"), ("/static/chat.css", "text/css")):
        asset = client.get(path, headers={"X-API-Key": ""})
        assert asset.status_code == 200 and kind in asset.headers["content-type"], (path, asset.headers)
    assert re.search(r'<script src="/static/chat\.js"></script>', page.text)


def test_a_plain_http_image_base_is_allowed_by_its_origin_only(settings_factory: Callable[..., Any]) -> None:
    from fastapi.testclient import TestClient

    from api.http.app import create_app

    app = create_app(settings_factory(api={"public_image_base_url": "http://cdn.lan:8080/photos/"}))
    header = TestClient(app, headers={"X-API-Key": API_KEY}).get("/").headers["content-security-policy"]
    assert _csp(header)["img-src"] == ["'self'", "data:", "https:", "http://cdn.lan:8080"]


def test_the_chat_script_never_writes_html() -> None:
    """The page's one script builds nodes and sets textContent: no HTML sink takes a string."""
    script = (Path(__file__).resolve().parents[3] / "api" / "http" / "static" / "chat.js").read_text()
    script = re.sub(r"^\s*//.*$", "", script, flags=re.MULTILINE)  # the header comment names the sinks it avoids
    assert "textContent" in script
    sinks = re.findall(r"\b(innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval|new Function)\b", script)
    assert sinks == []


# -- in Chromium ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_catalogue(fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 shirts (4 with hostile titles) and 4 T-shirts of the real catalogue, images symlinked."""
    with (fashion_dir / "products.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    shirts = [r["product_id"] for r in rows if r["article_type"] == "Shirts"][:8]
    tshirts = [r["product_id"] for r in rows if r["article_type"] == "Tshirts"][:4]
    out = write_subset(fashion_dir, tmp_path_factory.mktemp("hostile-catalogue"), shirts + tshirts)
    with (out / "products.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields, kept = reader.fieldnames or [], list(reader)
    hostile = dict(zip(shirts, HOSTILE_TITLES.values(), strict=False))
    for row in kept:
        row["title"] = hostile.get(row["product_id"], row["title"])
    with (out / "products.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    return out


@pytest.fixture(scope="module")
def hostile_live(
    hostile_catalogue: Path,
    tiny_tower_dir: Path,
    text_encoder: Any,
    image_encoder: Any,
    shared_encoders: None,
    small_worker: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    from api.http.app import create_app
    from api.settings import Settings
    from retrieval.catalogue import load_catalogue
    from retrieval.edge_store import EdgeStore
    from retrieval.indexer import build_index

    home = tmp_path_factory.mktemp("hostile-home")
    store = EdgeStore(Settings(home=home).qdrant_dir)
    build_index(load_catalogue(hostile_catalogue), store, text_encoder, image_encoder, batch_size=64)
    store.close()
    settings = make_settings(
        home,
        hostile_catalogue,
        tiny_tower_dir,
        llm={"workers": [{"url": small_worker, "name": "small", "max_concurrency": 4}]},
        chat={"explainer_max_tokens": 24, "ranker_deadline_s": 60, "explainer_deadline_s": 60},
        api={"chat_deadline_s": 120},
    )
    server, thread, url = start_live(create_app(settings))
    yield LiveServer(url, None)
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture(scope="module")
def browser_page() -> Iterator[Any]:
    # Every CSP violation the page meets is kept, from the first byte of every document.
    violations = (
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    with chromium_page(violations) as page:
        yield page


def test_hostile_titles_are_shown_as_text_and_nothing_runs(browser_page: Any, hostile_live: LiveServer) -> None:
    page = browser_page
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(hostile_live.url + "/")
    page.fill("#key", API_KEY)
    page.dispatch_event("#key", "change")
    page.locator("#n").fill("12")  # every product of the catalogue fits
    page.fill("#text", "shirts for men")
    page.click("#send")
    page.wait_for_selector(".turn[data-done='true']", timeout=120_000)

    names = page.locator(".turn .card .name").all_inner_texts()
    for title in HOSTILE_TITLES.values():
        assert title in names, f"{title!r} is not shown literally among {names}"
    # The explanation is text too: whatever it quotes, it holds no element.
    assert page.locator(".turn .explanation *").count() == 0
    assert page.locator(".turn .explanation").inner_text().strip()

    assert dialogs == []
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src='x'], svg, b, .turn script").count() == 0
    assert page.evaluate("document.scripts.length") == 1  # chat.js, nothing injected
    # The page did all of that under its CSP without tripping it: nothing of its own is inline.
    assert page.evaluate("window.__violations") == []
    assert errors == []


def test_markup_that_reached_the_dom_still_could_not_run(browser_page: Any, hostile_live: LiveServer) -> None:
    """Defence in depth: were some future code to render a title as HTML, the CSP blocks its handlers."""
    page = browser_page
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(hostile_live.url + "/")
    page.evaluate(
        "document.getElementById('turns').insertAdjacentHTML('beforeend', "
        f"{HOSTILE_TITLES['img']!r} + {HOSTILE_TITLES['script']!r})"
    )
    page.wait_for_function("window.__violations.some((v) => v.startsWith('script-src'))", timeout=10_000)
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
