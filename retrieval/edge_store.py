"""Qdrant Edge: the real Qdrant engine in-process, persisted under ``TANDEM_HOME`` (the embedded default).

Crash safety (a ``kill -9`` at any point leaves an index that opens, and ``tandem index`` resumes it):
every write goes through the shard's write-ahead log, which the engine replays on load; the optimiser
builds a segment aside and swaps it in, and what a killed optimiser left aside is removed on the next
open; Tandem's manifest is written atomically (temp file, fsync, rename) after the shard exists, and
removed before a rebuild deletes anything, so "manifest present" always means "shard complete".
One process at a time may open a shard (the engine locks its WAL): the service and ``tandem index``
cannot share one; index through a Qdrant server (``TANDEM_QDRANT__URL``) to write while serving from
another process.

Example:
    >>> store = EdgeStore(Path("var/qdrant/products"))  # doctest: +SKIP
    >>> store.create(manifest)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from retrieval.errors import IndexNotFoundError, StoreError
from retrieval.store import (
    CATEGORY_FIELD,
    IMAGE_VECTOR,
    TEXT_VECTOR,
    IndexManifest,
    SearchFilter,
    StoredHit,
    VectorRecord,
    hits_from_points,
    level_field,
    manifest_path,
    point_id,
    vectors_by_product,
)

__all__ = ["EdgeStore"]

# RRF's k: 60 is the constant from the original paper and Qdrant's default.
RRF_K = 60
# Where the engine's optimiser builds a segment before swapping it in; Qdrant Edge does not clear it on load.
_TEMP_SEGMENTS = "temp_segments"


def _fsync_dir(directory: Path) -> None:
    # A rename or unlink is durable only once the directory entry is; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _damaged(directory: Path, what: str) -> StoreError:
    return StoreError(
        f"the Qdrant Edge index in {directory} is damaged ({what}); an index is rebuilt from the catalogue: "
        f"delete {directory} and run `tandem index` again"
    )


@contextlib.contextmanager
def _engine_call(what: str) -> Iterator[None]:
    """Translate the engine's errors into StoreError: qdrant-edge raises bare ``Exception`` (a shard being
    recreated by another writer answers "Shard is not initialized"), which callers cannot tell from a bug."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"Qdrant Edge {what} failed: {exc}") from exc


def _edge_filter(flt: SearchFilter | None) -> qe.Filter | None:
    if flt is None or flt.is_empty():
        return None
    must: list[Any] = [qe.FieldCondition(key=key, match=qe.MatchAny(any=values)) for key, values in flt.conditions()]
    return qe.Filter(must=must)


class EdgeStore:
    """:class:`~retrieval.store.VectorStore` over a Qdrant Edge shard in ``directory``.

    Qdrant Edge runs no background optimiser, so :meth:`finalize` runs it in-process
    (building HNSW once a segment passes the indexing threshold).
    """

    def __init__(self, directory: Path, *, hnsw_ef: int | None = None) -> None:
        self._dir = Path(directory)
        self._shard_dir = self._dir / "shard"
        self._shard: qe.EdgeShard | None = None
        self._manifest: IndexManifest | None = None
        self._params = qe.SearchParams(hnsw_ef=hnsw_ef) if hnsw_ef else None
        mpath = manifest_path(self._dir)
        # No manifest means no complete index (a first build or a rebuild was cut short): the next
        # `create` starts it over, so only a manifest makes the shard worth opening.
        if mpath.is_file() and self._shard_dir.is_dir():
            try:
                manifest = IndexManifest.model_validate_json(mpath.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise _damaged(self._dir, f"unreadable manifest {mpath.name}: {exc}") from exc
            try:
                self._shard = qe.EdgeShard.load(str(self._shard_dir))
            except Exception as exc:  # qdrant-edge raises bare Exception for engine errors
                if "WouldBlock" in str(exc):
                    raise StoreError(
                        f"the Qdrant Edge index in {self._dir} is open in another process (one process at a time;"
                        " stop the other `tandem` process, or use a Qdrant server: TANDEM_QDRANT__URL)"
                    ) from exc
                raise _damaged(self._dir, f"the engine cannot load it: {exc}") from exc
            self._manifest = manifest
            self._clear_temp_segments()

    @property
    def directory(self) -> Path:
        return self._dir

    def _clear_temp_segments(self) -> None:
        # Only called with the shard loaded, so this process holds its lock and no optimiser runs: what is
        # there was left by a killed optimiser (as large as the segments it was rebuilding) and is never read.
        temp = self._shard_dir / _TEMP_SEGMENTS
        if temp.is_dir():
            for leftover in temp.iterdir():
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)

    def _require(self) -> qe.EdgeShard:
        if self._shard is None:
            raise IndexNotFoundError(f"no index in {self._dir}: run `tandem index` first")
        return self._shard

    def manifest(self) -> IndexManifest | None:
        return self._manifest

    def create(self, manifest: IndexManifest, *, recreate: bool = False) -> None:
        if self._shard is not None:
            if not recreate:
                raise StoreError(f"an index already exists in {self._dir}")
            self._shard.close()
            self._shard = None
            self._manifest = None
        if self._dir.exists():
            # The manifest goes first: a crash while the shard is being deleted must not leave a manifest
            # in front of half a shard (it would not open, and `--rebuild` could not get past it).
            manifest_path(self._dir).unlink(missing_ok=True)
            _fsync_dir(self._dir)
            shutil.rmtree(self._dir)
        self._shard_dir.mkdir(parents=True)
        config = qe.EdgeConfig(
            vectors={
                IMAGE_VECTOR: qe.EdgeVectorParams(size=manifest.image_dim, distance=qe.Distance.Cosine),
                TEXT_VECTOR: qe.EdgeVectorParams(size=manifest.text_dim, distance=qe.Distance.Cosine),
            }
        )
        try:
            shard = qe.EdgeShard.create(str(self._shard_dir), config)
            keyword = qe.PayloadSchemaType.Keyword
            shard.update(qe.UpdateOperation.create_field_index(CATEGORY_FIELD, keyword))
            shard.update(qe.UpdateOperation.create_field_index("product_id", keyword))
            for depth in range(len(manifest.category_levels)):
                shard.update(qe.UpdateOperation.create_field_index(level_field(depth), keyword))
            for name in manifest.attribute_fields:
                shard.update(qe.UpdateOperation.create_field_index(f"attributes.{name}", keyword))
            shard.flush()
        except Exception as exc:  # qdrant-edge raises bare Exception for engine errors
            raise StoreError(f"cannot create the Qdrant Edge index in {self._dir}: {exc}") from exc
        # The manifest is written last and atomically: a crash before it leaves no index, never half of one.
        _write_atomically(manifest_path(self._dir), manifest.model_dump_json(indent=2))
        self._shard, self._manifest = shard, manifest

    def existing(self, product_ids: Sequence[str]) -> set[str]:
        shard = self._require()
        ids: list[qe.PointId] = [point_id(p) for p in product_ids]
        with _engine_call("retrieve"):
            records = shard.retrieve(ids, with_payload=["product_id"], with_vector=False)
        return {str((r.payload or {})["product_id"]) for r in records}

    def vectors(self, product_ids: Sequence[str], *, using: str) -> dict[str, np.ndarray]:
        shard = self._require()
        ids: list[qe.PointId] = [point_id(p) for p in product_ids]
        with _engine_call("retrieve"):
            records = shard.retrieve(ids, with_payload=["product_id"], with_vector=[using])
        return vectors_by_product(records, using)

    def upsert(self, records: Sequence[VectorRecord]) -> None:
        shard = self._require()
        points = [
            qe.Point(
                id=point_id(r.product_id),
                vector={name: np.asarray(v, dtype=np.float32).tolist() for name, v in r.vectors.items()},
                payload=dict(r.payload),
            )
            for r in records
        ]
        with _engine_call("upsert"):
            shard.update(qe.UpdateOperation.upsert_points(points))

    def search(self, vector: np.ndarray, *, using: str, k: int, filter: SearchFilter | None = None) -> list[StoredHit]:
        shard = self._require()
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist(), using=using),
            filter=_edge_filter(filter),
            with_payload=True,
            params=self._params,
        )
        with _engine_call("query"):
            return hits_from_points(shard.query(request))

    def search_fused(
        self, queries: Mapping[str, np.ndarray], *, k: int, filter: SearchFilter | None = None, prefetch: int = 100
    ) -> list[StoredHit]:
        shard = self._require()
        flt = _edge_filter(filter)
        prefetches = [
            qe.Prefetch(
                limit=max(prefetch, k),
                query=qe.Query.Nearest(np.asarray(v, dtype=np.float32).tolist(), using=name),
                filter=flt,
                params=self._params,
            )
            for name, v in queries.items()
        ]
        fusion: Any = qe.Fusion.Rrf(k=RRF_K)  # the stubs type Fusion's nested classes too narrowly
        request = qe.QueryRequest(limit=k, prefetches=prefetches, query=fusion, with_payload=True)
        with _engine_call("fused query"):
            return hits_from_points(shard.query(request))

    def count(self, filter: SearchFilter | None = None) -> int:
        shard = self._require()
        with _engine_call("count"):
            return int(shard.count(qe.CountRequest(filter=_edge_filter(filter), exact=True)))

    def scroll(
        self, *, vectors: Sequence[str], batch: int = 2048
    ) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        shard = self._require()
        offset: qe.PointId | None = None
        while True:
            with _engine_call("scroll"):
                records, offset = shard.scroll(
                    qe.ScrollRequest(offset=offset, limit=batch, with_payload=True, with_vector=list(vectors))
                )
            for r in records:
                vec = r.vector if isinstance(r.vector, dict) else {}
                yield dict(r.payload or {}), {n: np.asarray(vec[n], dtype=np.float32) for n in vectors if n in vec}
            if offset is None or not records:
                return

    def finalize(self) -> None:
        shard = self._require()
        with _engine_call("flush/optimise"):
            shard.flush()
            shard.optimize()
            shard.flush()

    def close(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None

    def info(self) -> dict[str, Any]:
        shard = self._require()
        with _engine_call("info"):
            i = shard.info()
        return {"points": i.points_count, "indexed_vectors": i.indexed_vectors_count, "segments": i.segments_count}
