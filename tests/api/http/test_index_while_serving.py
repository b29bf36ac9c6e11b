"""The service and its index under crashes and writes: kill -9 while answering, and indexing while serving.

Qdrant Edge is in-process and one process at a time may open a shard (its WAL is locked), so:

* ``tandem index`` in a second process while ``tandem serve`` runs is refused with one clear line,
  and leaves the index untouched (checked after a ``kill -9`` and a restart of the service);
* the supported way to add products without stopping an Edge-backed service is to index from the
  process that serves, into the store its lifespan opened (``app.state.resources.store``): the engine
  takes writes beside reads. With a Qdrant server (``TANDEM_QDRANT__URL``) ``tandem index`` may run
  in any process. Flat search finds new products at once; hierarchical search reaches new
  *categories* once the service's refresh (every ``TANDEM_RETRIEVAL__REFRESH_S``) has rebuilt its
  level-1 category index, with no restart.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from api.settings import Settings
from eval.process import Service, free_port, wait_http
from retrieval.catalogue import load_catalogue
from retrieval.categories import category_key
from retrieval.edge_store import EdgeStore
from retrieval.indexer import build_index
from tests.api.conftest import make_settings, start_live
from tests.conftest import write_subset
from tests.support.index_oracle import assert_same_index, snapshot
from tests.support.processes import REPO, plain, report_figure, tandem_command, tandem_env

URL = "/v1/recommendations"


def _queries(catalogue_dir: Path) -> list[dict[str, Any]]:
    photos = sorted(p.name for p in (catalogue_dir / "images").glob("*.jpg"))[:2]
    return [
        {"text": "red kurta for women", "top_k": 5},
        {"text": "navy formal shirt", "top_k": 5, "mode": "flat"},
        {"image_path": photos[0], "top_k": 5},
        {"image_path": photos[1], "text": "in black", "top_k": 5, "mode": "flat"},
    ]


def _answers(base: str, queries: list[dict[str, Any]]) -> list[list[tuple[str, float]]]:
    out = []
    for q in queries:
        r = httpx.post(base + URL, json=q, timeout=60)
        assert r.status_code == 200, r.text
        out.append([(i["product_id"], i["score"]) for i in r.json()["items"]])
    return out


@dataclass
class Load:
    """Queries sent without pause from a few threads until stopped: every answer's status and latency."""

    base: str
    bodies: list[dict[str, Any]]
    threads: int = 2
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: list[tuple[float, int | str, float]] = field(default_factory=list)  # (sent at, status, seconds)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for n in range(self.threads):
            t = threading.Thread(target=self._run, args=(n,), daemon=True)
            t.start()
            self._workers.append(t)

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            i = n
            while not self.stop.is_set():
                body = self.bodies[i % len(self.bodies)]
                i += self.threads
                t0 = time.perf_counter()
                try:
                    status: int | str = client.post(URL, json=body).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with self.lock:
                    self.results.append((t0, status, time.perf_counter() - t0))

    def done(self) -> int:
        with self.lock:
            return len(self.results)

    def finish(self) -> None:
        self.stop.set()
        for t in self._workers:
            t.join(timeout=120)


def _wait_for(condition: Callable[[], bool], guard_s: float = 120.0) -> None:
    # A hang guard, not a measurement.
    deadline = time.monotonic() + guard_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_kill_9_service_while_it_answers_then_restart_answers_the_same(
    api_home: Path,
    small_catalogue_dir: Path,
    tiny_tower_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    home = tmp_path / "home"
    shutil.copytree(api_home, home)
    pristine = tmp_path / "pristine"  # the oracle: the same index, never served
    shutil.copytree(api_home, pristine)
    env = tandem_env(home, image_checkpoint=tiny_tower_dir, CATALOGUE__PATH=str(small_catalogue_dir))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = tandem_command("serve", "--port", str(port), "--no-embedded-llm")
    queries = _queries(small_catalogue_dir)

    first = Service("tandem serve", command, tmp_path / "serve-1.log", env=env)
    try:
        wait_http(base + "/readyz", first, timeout_s=300)
        before = _answers(base, queries)

        # A second process cannot open the shard the service holds: one clear line, nothing written.
        writer = subprocess.run(
            tandem_command("index", "--catalog", str(small_catalogue_dir)),
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert writer.returncode == 1, writer.stdout + writer.stderr
        lines = plain(writer.stderr).strip().splitlines()
        assert "Traceback" not in writer.stderr
        assert lines[-1].startswith("error: ") and "open in another process" in lines[-1], writer.stderr

        load = Load(base, queries, threads=4)
        load.start()
        _wait_for(lambda: load.done() >= 8)  # answering, with more requests on their way
        killed_at = time.perf_counter()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=30)
        load.finish()
    finally:
        first.stop()
    assert first.proc.returncode == -signal.SIGKILL
    sent = [status for t0, status, _ in load.results if t0 < killed_at]
    report_figure(request, "answered_before_the_kill", sum(status == 200 for status in sent))
    report_figure(request, "in_flight_cut_by_the_kill", sum(status != 200 for status in sent))
    assert any(status != 200 for status in sent), "no request was in flight when the service was killed"
    assert all(isinstance(status, str) for status in sent if status != 200), sent  # cut, not refused

    second = Service("tandem serve", command, tmp_path / "serve-2.log", env=env)
    try:
        wait_http(base + "/readyz", second, timeout_s=300)
        after = _answers(base, queries)
        info = httpx.get(base + "/readyz", timeout=30).json()["detail"]
    finally:
        second.stop()
    assert [[pid for pid, _ in a] for a in after] == [[pid for pid, _ in b] for b in before]
    for a, b in zip(after, before, strict=True):
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-6)
    served, oracle = EdgeStore(Settings(home=home).qdrant_dir), EdgeStore(Settings(home=pristine).qdrant_dir)
    try:
        assert info["products"] == served.count() == len(load_catalogue(small_catalogue_dir))
        assert served.manifest() == oracle.manifest()
        assert_same_index(snapshot(served), snapshot(oracle), atol=0.0)
    finally:
        served.close()
        oracle.close()


@dataclass(frozen=True)
class Split:
    served: Path  # the catalogue the service starts with
    batch: Path  # the new products, indexed while it serves
    batch_ids: list[str]


@pytest.fixture(scope="module")
def split(small_catalogue_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Split:
    products = load_catalogue(small_catalogue_dir, limit=240).products
    # 60 products from across the categories, and every product of one category the service never saw.
    sizes = Counter(p.category for p in products)
    unseen = min((c for c, n in sizes.items() if n >= 2), key=lambda c: (sizes[c], c))
    batch = [p.product_id for i, p in enumerate(products) if i % 4 == 3 or p.category == unseen]
    served = [p.product_id for p in products if p.product_id not in set(batch)]
    root = tmp_path_factory.mktemp("split")
    write_subset(small_catalogue_dir, root / "served", served)
    write_subset(small_catalogue_dir, root / "batch", batch)
    return Split(root / "served", root / "batch", batch)


@pytest.fixture
def served_home(split: Split, tmp_path: Path, text_encoder: Any, image_encoder: Any) -> Path:
    home = tmp_path / "home"
    store = EdgeStore(Settings(home=home).qdrant_dir)
    build_index(load_catalogue(split.served), store, text_encoder, image_encoder)
    store.close()
    return home


def _p95(seconds: list[float]) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, 95)) if seconds else float("nan")


def test_index_a_new_batch_while_the_service_answers(
    split: Split,
    served_home: Path,
    small_catalogue_dir: Path,
    tiny_tower_dir: Path,
    shared_encoders: None,
    request: pytest.FixtureRequest,
) -> None:
    from api.http.app import create_app

    batch = load_catalogue(split.batch)
    title = {p.product_id: p.title for p in batch.products}
    # No keys: loopback clients only and no per-key rate limit, which this load is not about.
    settings = make_settings(
        served_home, small_catalogue_dir, tiny_tower_dir, api={"keys": [], "deadline_s": 60.0},
        retrieval={"refresh_s": 0.2},  # the service's own refresh loop, on a short period
    )  # fmt: skip
    app = create_app(settings)
    server, thread, base = start_live(app)
    try:
        resources = app.state.resources
        store = resources.store
        served = store.count()
        assert store.existing(split.batch_ids) == set()

        queries = [
            {"text": t, "top_k": 10, "mode": m} for t in list(title.values())[:6] for m in ("flat", "hierarchical")
        ]
        categories = resources.retriever.categories  # as built at start-up
        load = Load(base, queries, threads=2)
        load.start()
        _wait_for(lambda: load.done() >= 20)  # a baseline before indexing starts
        started = time.perf_counter()
        # The supported path: the serving process indexes into the store (and with the encoders) it serves from.
        retriever = resources.retriever.retriever
        # No optimiser run here: Qdrant Edge's holds the GIL while it builds HNSW, stalling every request.
        report = build_index(
            batch,
            store,
            retriever.text_encoder,
            retriever.image_encoder,
            limits=settings.images,
            batch_size=4,
            finalize=False,
        )
        ended = time.perf_counter()
        load.finish()

        assert (report.indexed, report.failed) == (len(split.batch_ids), [])
        assert store.count() == served + len(split.batch_ids)
        assert store.existing(split.batch_ids) == set(split.batch_ids)
        failed = [(s, round(d, 3)) for _, s, d in load.results if s != 200]
        assert failed == []
        during = [d for t0, _, d in load.results if started <= t0 < ended]
        idle = [d for t0, _, d in load.results if t0 < started]
        assert during, "no query ran while the batch was indexed"
        # Level 1 knows the categories it was built with at start-up (a product of a new category waits for the
        # service's refresh, which may run while the batch is indexed, and runs again once it is whole).
        known = {p.product_id for p in batch.products if category_key(p.category, categories.depth) in categories.keys}
        assert known < set(title), "the batch must hold a category the service had not seen"
        _wait_for(lambda: resources.info["products"] == served + len(title))
        assert resources.refresh_retrieval() is False  # the loop has rebuilt from the whole index already
        refreshed = resources.retriever.categories
        assert refreshed is not categories
        assert {category_key(p.category, refreshed.depth) for p in batch.products} <= set(refreshed.keys)
        found_after = _found(base, title)
        ready = httpx.get(base + "/readyz", timeout=30).json()["detail"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)

    figures = {
        "queries_during_indexing": len(during),
        "p95_ms_during_indexing": round(_p95(during), 1),
        "p95_ms_before_indexing": round(_p95(idle), 1),
        "indexing_s": round(ended - started, 2),
        "new_products_in_categories_unknown_at_start": len(title) - len(known),
        "new_products_found_hierarchical_after_refresh": f"{len(found_after['hierarchical'])}/{len(title)}",
    }
    for name, value in figures.items():
        report_figure(request, name, value)
    # Once refreshed, every new product is found by its own title, over the whole catalogue and inside its
    # category, the category new to the service included.
    assert found_after["flat"] == found_after["hierarchical"] == set(title)
    assert ready["products"] == served + len(title) and ready["categories"] == len(refreshed.keys)


def _found(base: str, title: dict[str, str]) -> dict[str, set[str]]:
    """Which products each mode finds among the first 10 hits of a query made of the product's own title."""
    found: dict[str, set[str]] = {"flat": set(), "hierarchical": set()}
    for pid, text in title.items():
        for mode, hits in found.items():
            r = httpx.post(base + URL, json={"text": text, "top_k": 10, "mode": mode}, timeout=60)
            assert r.status_code == 200, r.text
            if pid in [i["product_id"] for i in r.json()["items"]]:
                hits.add(pid)
    return found


class _NoOptimiserStore(EdgeStore):
    """An Edge store that fails the test if the optimiser is run."""

    def finalize(self) -> None:
        raise AssertionError("the optimiser ran on a store that serves queries")


def test_indexing_beside_queries_leaves_the_optimiser_for_later_and_the_products_searchable(
    split: Split, tmp_path: Path, text_encoder: Any, image_encoder: Any
) -> None:
    store = _NoOptimiserStore(tmp_path / "qdrant")
    batch = load_catalogue(split.batch)
    report = build_index(batch, store, text_encoder, image_encoder, finalize=False)
    assert report.indexed == len(batch)
    probe = batch.products[3]
    vector = text_encoder.encode([probe.text()])[0]
    assert store.search(vector, using="text", k=1)[0].product_id == probe.product_id
    store.close()
    reopened = EdgeStore(tmp_path / "qdrant")  # what was written without a flush is there after a restart
    assert reopened.existing([p.product_id for p in batch.products]) == {p.product_id for p in batch.products}
    reopened.finalize()
    reopened.close()


def test_an_index_rebuilt_with_other_encoders_takes_the_service_out_of_readiness(
    served_home: Path, small_catalogue_dir: Path, tiny_tower_dir: Path, shared_encoders: None
) -> None:
    from api.http.app import create_app

    settings = make_settings(
        served_home, small_catalogue_dir, tiny_tower_dir, api={"keys": []}, retrieval={"refresh_s": 0.1}
    )
    app = create_app(settings)
    server, thread, base = start_live(app)
    try:
        assert httpx.get(base + "/readyz", timeout=30).status_code == 200
        store = app.state.resources.store
        manifest = store.manifest()
        # What `tandem index --rebuild` with another image tower leaves behind, as another process would.
        store.create(manifest.model_copy(update={"image_encoder": "open_clip:another-tower@0123"}), recreate=True)
        _wait_for(lambda: httpx.get(base + "/readyz", timeout=30).status_code == 503)
        reason = httpx.get(base + "/readyz", timeout=30).json()["detail"]["reason"]
        r = httpx.post(base + URL, json={"text": "red kurta", "top_k": 5}, timeout=30)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert "open_clip:another-tower@0123" in reason
    assert r.status_code == 503, r.text  # no answers from vectors in another space
