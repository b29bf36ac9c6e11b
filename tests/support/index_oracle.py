"""An index read back through the :class:`~retrieval.store.VectorStore` interface, to compare with an oracle.

Example:
    >>> assert_same_index(snapshot(resumed_store), snapshot(clean_store))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR, VectorStore

__all__ = ["Snapshot", "assert_same_index", "snapshot"]

Snapshot = dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]]


def snapshot(store: VectorStore) -> Snapshot:
    """Every stored product: payload and both vectors, by product id."""
    out: Snapshot = {}
    for payload, vectors in store.scroll(vectors=[IMAGE_VECTOR, TEXT_VECTOR]):
        out[str(payload["product_id"])] = (payload, vectors)
    return out


def assert_same_index(got: Snapshot, want: Snapshot, *, atol: float = 1e-4) -> None:
    """The same ids, payloads and vector names; vectors equal to ``atol`` (batch mixes change the last bits)."""
    assert sorted(got) == sorted(want)
    for pid, (payload, vectors) in want.items():
        assert got[pid][0] == payload, pid
        assert sorted(got[pid][1]) == sorted(vectors), pid
        for name, vec in vectors.items():
            np.testing.assert_allclose(got[pid][1][name], vec, atol=atol, err_msg=f"{pid} {name}")
