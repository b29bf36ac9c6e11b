from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.text_cache import PrecomputedTextEncoder, cached_text_vectors, encode_texts_cached


class CountingEncoder:
    """Deterministic stand-in encoder that records how many texts it really encoded."""

    model_id = "counting"
    dim = 4

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += len(texts)
        return np.array([[len(t), t.count("a"), 1.0, 0.0] for t in texts], dtype=np.float32)


def test_cache_round_trip(tmp_path: Path) -> None:
    enc = CountingEncoder()
    texts = ["red kurta", "blue jeans", "a bag"]
    assert cached_text_vectors(enc, texts, tmp_path) is None
    first = encode_texts_cached(enc, texts, tmp_path)
    again = encode_texts_cached(enc, texts, tmp_path)
    np.testing.assert_array_equal(first, again)
    assert enc.calls == 3  # the second call came from disk
    assert cached_text_vectors(enc, texts[:2], tmp_path) is None  # another list is another key


def test_precomputed_encoder_serves_known_texts_and_falls_back() -> None:
    enc = CountingEncoder()
    texts = ["red kurta", "blue jeans"]
    pre = PrecomputedTextEncoder(enc, texts, enc.encode(texts))
    enc.calls = 0
    out = pre.encode(["blue jeans", "new text", "red kurta"])
    np.testing.assert_array_equal(out, CountingEncoder().encode(["blue jeans", "new text", "red kurta"]))
    assert enc.calls == 1
    assert pre.model_id == enc.model_id and pre.encode([]).shape == (0, 4)
