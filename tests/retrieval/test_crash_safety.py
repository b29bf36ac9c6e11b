"""A killed indexer leaves an index that resumes to exactly what a clean build makes.

The oracle is a clean, uninterrupted build of the same products, read back through the
:class:`~retrieval.store.VectorStore` interface: the same manifest, the same ids, the same
payloads and the same vectors (to float tolerance: a resumed run encodes other batch mixes).
Crashes are real: ``kill -9`` of ``tandem index`` at seeded points of its own progress bar, and
of a process whose optimiser is building HNSW; the rarer windows (a rebuild cut short while it
deletes, a damaged file) are reproduced as the state such a crash leaves.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.settings import Settings
from retrieval.catalogue import load_catalogue
from retrieval.edge_store import EdgeStore
from retrieval.errors import StoreError
from retrieval.indexer import build_index
from retrieval.store import IMAGE_VECTOR, IndexManifest
from tests.support.index_oracle import Snapshot, assert_same_index, snapshot
from tests.support.processes import REPO, kill_at_progress, plain, report_figure, tandem_command, tandem_env

N = 96  # products: six batches of 16, a handful of seconds of encoding per run
BATCH = 16
SEED = 19


@dataclass(frozen=True)
class Oracle:
    manifest: IndexManifest
    points: Snapshot


@pytest.fixture(scope="module")
def oracle(small_catalogue_dir: Path, tmp_path_factory: pytest.TempPathFactory, text_encoder, image_encoder) -> Oracle:  # type: ignore[no-untyped-def]
    store = EdgeStore(tmp_path_factory.mktemp("oracle") / "qdrant")
    report = build_index(load_catalogue(small_catalogue_dir, limit=N), store, text_encoder, image_encoder)
    assert (report.indexed, report.failed) == (N, [])
    manifest = store.manifest()
    assert manifest is not None
    points = snapshot(store)
    store.close()
    return Oracle(manifest, points)


def read_index(path: Path) -> tuple[IndexManifest | None, Snapshot]:
    store = EdgeStore(path)
    try:
        return store.manifest(), snapshot(store) if store.manifest() else {}
    finally:
        store.close()


def test_kill_9_indexer_again_and_again_then_resume_equals_a_clean_build(
    oracle: Oracle,
    small_catalogue_dir: Path,
    tiny_tower_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    home = tmp_path / "home"
    env = tandem_env(home, image_checkpoint=tiny_tower_dir, ENCODERS__BATCH_SIZE=str(BATCH))
    command = tandem_command("index", "--catalog", str(small_catalogue_dir), "--limit", str(N))
    rng = random.Random(SEED)
    # One point in each third of the run (the first may land while the collection is being created), the
    # last with two batches still to do, so that it surely cuts the run short: the bar is redrawn a few times a
    # second, so the work can be a batch ahead of the count it shows (a fresh clone's run once stored all 96
    # before the last kill landed).
    points = [rng.randrange(0, N // 3), rng.randrange(N // 3, 2 * N // 3),
              rng.randrange(2 * N // 3, N - 2 * BATCH + 1)]  # fmt: skip
    seen = []
    for i, at in enumerate(points):
        run = kill_at_progress(command, env, at=at, total=N, log=tmp_path / f"killed-{i}.log")
        assert run.killed, f"run {i} was not killed at {at}/{N} (exit {run.returncode}):\n{run.output[-3000:]}"
        seen.append(run.seen)
    report_figure(request, "kill_points", points)
    report_figure(request, "progress_shown_at_kill", seen)
    qdrant_dir = Settings(home=home).qdrant_dir
    # Counted on a copy: opening the original here would hand the resumed run a cleanly closed shard.
    peek = tmp_path / "peek"
    shutil.copytree(qdrant_dir, peek)
    _, partial = read_index(peek)
    report_figure(request, "products_stored_after_the_kills", len(partial))
    assert len(partial) < N  # the last kill really cut the run short

    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = re.search(r"indexed (\d+), already present (\d+), failed (\d+) of (\d+)", plain(resumed.stdout))
    assert summary is not None, resumed.stdout
    indexed, present, failed, total = map(int, summary.groups())
    # It resumed (kept what the killed runs stored) and did exactly the rest.
    assert (present, indexed, failed, total) == (len(partial), N - len(partial), 0, N)

    manifest, points_now = read_index(qdrant_dir)
    assert manifest == oracle.manifest
    assert_same_index(points_now, oracle.points)


# A process that builds HNSW (enough points to pass the indexing threshold) through EdgeStore.
_OPTIMISER_VICTIM = """
import sys
from pathlib import Path
import numpy as np
from retrieval.edge_store import EdgeStore
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR, IndexManifest, VectorRecord
n, dim = int(sys.argv[2]), 384
store = EdgeStore(Path(sys.argv[1]))
store.create(IndexManifest(text_encoder="t", text_dim=dim, image_encoder="i", image_dim=dim))
rng = np.random.default_rng(0)
for start in range(0, n, 1000):
    v = rng.standard_normal((2, 1000, dim)).astype(np.float32)
    store.upsert([VectorRecord(str(start + i), {IMAGE_VECTOR: v[0, i], TEXT_VECTOR: v[1, i]},
                               {"product_id": str(start + i)}) for i in range(1000)])
print("optimising", flush=True)
store.finalize()
print("finished", flush=True)
"""


def test_kill_9_while_the_optimiser_builds_hnsw_leaves_an_index_that_opens_whole_and_no_leftovers(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "qdrant"
    n = 8000
    proc = subprocess.Popen(
        [sys.executable, "-c", _OPTIMISER_VICTIM, str(directory), str(n)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "optimising"
    # Killed once the engine has started building a segment aside (observed on disk, not timed).
    builders = directory / "shard" / "temp_segments"
    guard = time.monotonic() + 120
    while not (builders.is_dir() and any(builders.iterdir())):
        assert proc.poll() is None, "the optimiser finished before it could be killed"
        assert time.monotonic() < guard, "the optimiser never started a segment"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert any(builders.iterdir())  # the crash state: a half-built segment aside

    store = EdgeStore(directory)
    assert list(builders.iterdir()) == []  # removed on open: it can be as large as the index
    assert store.count() == n
    store.finalize()  # what a resumed `tandem index` does last: HNSW is built now
    assert store.info()["indexed_vectors"] == 2 * n
    probe = store.vectors(["123"], using=IMAGE_VECTOR)["123"]
    assert store.search(probe, using=IMAGE_VECTOR, k=1)[0].product_id == "123"
    store.close()


class _Crash(BaseException):
    """Stands for the process dying at this instruction (nothing after it runs)."""


def test_a_rebuild_killed_while_deleting_the_old_shard_resumes_to_a_clean_build(
    oracle: Oracle,
    small_catalogue_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text_encoder,
    image_encoder,
) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "qdrant"
    catalogue = load_catalogue(small_catalogue_dir, limit=N)
    store = EdgeStore(directory)
    build_index(load_catalogue(small_catalogue_dir, limit=10), store, text_encoder, image_encoder)
    rmtree = shutil.rmtree

    def dies_halfway(path: Path, *args: Any, **kwargs: Any) -> None:
        # Part of the old shard is deleted (the engine's config, segments and WAL), the rest not yet.
        (Path(path) / "shard" / "edge_config.json").unlink()
        rmtree(Path(path) / "shard" / "segments")
        rmtree(Path(path) / "shard" / "wal")
        raise _Crash

    monkeypatch.setattr("retrieval.edge_store.shutil.rmtree", dies_halfway)
    with pytest.raises(_Crash):
        build_index(catalogue, store, text_encoder, image_encoder, rebuild=True)
    monkeypatch.undo()

    # The next process: `tandem index --rebuild` (or without --rebuild) must get past what was left.
    reopened = EdgeStore(directory)
    assert reopened.manifest() is None  # no manifest in front of half a shard: it reads as "no index yet"
    report = build_index(catalogue, reopened, text_encoder, image_encoder, batch_size=BATCH)
    assert (report.indexed, report.skipped_existing) == (N, 0)
    assert reopened.manifest() == oracle.manifest
    assert_same_index(snapshot(reopened), oracle.points)
    reopened.close()


@pytest.mark.parametrize("damage", ["torn manifest", "engine files gone"])
def test_a_damaged_index_is_refused_with_how_to_recover(
    damage: str, small_catalogue_dir: Path, tmp_path: Path, text_encoder, image_encoder
) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "qdrant"
    catalogue = load_catalogue(small_catalogue_dir, limit=8)
    store = EdgeStore(directory)
    build_index(catalogue, store, text_encoder, image_encoder)
    store.close()
    if damage == "torn manifest":
        manifest = directory / "tandem_manifest.json"
        manifest.write_text(manifest.read_text()[:25])
    else:
        for part in (directory / "shard").iterdir():
            shutil.rmtree(part) if part.is_dir() else part.unlink()

    with pytest.raises(StoreError) as refused:
        EdgeStore(directory)
    message = str(refused.value)
    assert "damaged" in message and f"delete {directory}" in message and "`tandem index`" in message
    # Following the advice works.
    shutil.rmtree(directory)
    store = EdgeStore(directory)
    assert build_index(catalogue, store, text_encoder, image_encoder).indexed == 8
    store.close()
