"""Text embeddings cached on disk, keyed by encoder and content, and served back as an encoder.

The sentence encoder is the slowest step on a CPU (≈200 texts/s on 2 cores): the image
tower's training embeds every product text once, and indexing the same catalogue with
the same encoder reuses those vectors instead of computing them again.

Example:
    >>> vecs = encode_texts_cached(encoder, texts, Path("var/cache"))  # doctest: +SKIP
    >>> fast = PrecomputedTextEncoder(encoder, texts, vecs)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrieval.encoders import TextEncoder

__all__ = ["PrecomputedTextEncoder", "cached_text_vectors", "encode_texts_cached"]


def _cache_path(encoder: TextEncoder, texts: Sequence[str], cache_dir: Path) -> Path:
    key = hashlib.sha256(encoder.model_id.encode() + b"\0" + "\n".join(texts).encode()).hexdigest()[:16]
    return cache_dir / f"text-{key}.npy"


def cached_text_vectors(encoder: TextEncoder, texts: Sequence[str], cache_dir: Path | None) -> np.ndarray | None:
    """The cached embeddings of exactly ``texts`` by ``encoder``, or None."""
    if cache_dir is None:
        return None
    path = _cache_path(encoder, texts, cache_dir)
    if not path.is_file():
        return None
    vecs: np.ndarray = np.load(path)
    return vecs if vecs.shape == (len(texts), encoder.dim) else None


def encode_texts_cached(encoder: TextEncoder, texts: Sequence[str], cache_dir: Path | None) -> np.ndarray:
    """Encode ``texts``, reading and writing the on-disk cache."""
    cached = cached_text_vectors(encoder, texts, cache_dir)
    if cached is not None:
        return cached
    vecs = encoder.encode(list(texts))
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".tmp-{_cache_path(encoder, texts, cache_dir).name}"
        np.save(tmp, vecs)
        tmp.rename(_cache_path(encoder, texts, cache_dir))
    return vecs


class PrecomputedTextEncoder:
    """Serves known texts from a table, falls back to the wrapped encoder for the rest (same ``model_id``)."""

    def __init__(self, encoder: TextEncoder, texts: Sequence[str], vectors: np.ndarray) -> None:
        self._encoder = encoder
        self._table = {t: vectors[i] for i, t in enumerate(texts)}
        self.model_id = encoder.model_id
        self.dim = encoder.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self._table]
        if missing:
            for t, v in zip(missing, self._encoder.encode(missing), strict=True):
                self._table[t] = v
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._table[t] for t in texts]).astype(np.float32)
